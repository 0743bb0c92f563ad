"""Uploads that objectd's SIGKILL interrupts, then the check afterwards (driven by
tests/tests/s3_crash.rs).

  crash_uploads.py upload OUTFILE   uploads 12 objects of 24 MiB (4 threads; even ones in one
                                    PUT, odd ones multipart with 8 MiB parts). Before each upload
                                    it appends {key, sha256, size} to OUTFILE.attempted; only once
                                    the upload is acknowledged does it append {key, sha256} to
                                    OUTFILE. Failures are expected (objectd dies) and tolerated.
  crash_uploads.py verify OUTFILE   with objectd back: every acknowledged object reads back
                                    byte-identical; the listing holds no key that was not
                                    attempted, and every listed key is whole (an upload that
                                    committed but whose answer was lost in the crash must be
                                    byte-identical to what was sent); an unlisted key is not
                                    readable; then aborts the multipart uploads the crash left
                                    (their parts become garbage for the pool GC).
Env: CRASH_BUCKET (default crash), plus the usual AWS_* variables.
"""

import hashlib
import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from common import MiB, client

BUCKET = os.environ.get("CRASH_BUCKET", "crash")
COUNT = 12
SIZE = 24 * MiB
PART = 8 * MiB


def append_line(path, rec, lock):
    with lock:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def upload(outfile):
    c = client(connect_timeout=5, read_timeout=60)
    try:
        c.create_bucket(Bucket=BUCKET)
    except ClientError as e:
        if e.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    lock = threading.Lock()
    acked, failed = [], []
    # All the data is made up front, so that once uploads are acknowledged the next ones are on
    # the wire at once (the kill must land in the middle of transfers, not of data generation).
    payloads = [os.urandom(SIZE) for _ in range(COUNT)]
    digests = [hashlib.sha256(p).hexdigest() for p in payloads]

    def one(i):
        key = f"obj-{i:02}"
        data, sha = payloads[i], digests[i]
        append_line(outfile + ".attempted", {"key": key, "sha256": sha, "size": len(data),
                                             "multipart": i % 2 == 1}, lock)
        try:
            if i % 2 == 0:
                c.put_object(Bucket=BUCKET, Key=key, Body=data)
            else:
                up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
                parts = []
                for n, off in enumerate(range(0, len(data), PART), 1):
                    etag = c.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n,
                                         Body=data[off:off + PART])["ETag"]
                    parts.append({"PartNumber": n, "ETag": etag})
                c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                            MultipartUpload={"Parts": parts})
        except Exception as e:  # noqa: BLE001 - objectd is killed under us: expected
            failed.append((key, f"{type(e).__name__}: {e}"))
            return
        append_line(outfile, {"key": key, "sha256": sha}, lock)
        acked.append(key)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(COUNT)))
    print(f"acknowledged {len(acked)}: {sorted(acked)}")
    for key, err in sorted(failed):
        print(f"failed {key}: {err[:200]}")


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def verify(outfile):
    c = client()
    acked = {r["key"]: r["sha256"] for r in read_lines(outfile)}
    attempted = {r["key"]: r for r in read_lines(outfile + ".attempted")}
    problems = []

    def sha_of(key):
        r = c.get_object(Bucket=BUCKET, Key=key)
        h, n = hashlib.sha256(), 0
        for piece in r["Body"].iter_chunks(1 << 20):
            h.update(piece)
            n += len(piece)
        return h.hexdigest(), n, r["ContentLength"]

    for key, sha in sorted(acked.items()):
        try:
            got, n, length = sha_of(key)
        except ClientError as e:
            problems.append(f"acknowledged {key} is unreadable: {e}")
            continue
        if (got, n, length) != (sha, SIZE, SIZE):
            problems.append(f"acknowledged {key}: sha256 {got} ({n} bytes, Content-Length {length}), expected {sha}")

    listed = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            listed[o["Key"]] = o["Size"]
    for key in sorted(set(acked) - set(listed)):
        problems.append(f"acknowledged {key} is not listed")
    for key, size in sorted(listed.items()):
        if key in acked:
            continue
        if key not in attempted:
            problems.append(f"listed {key} was never uploaded")
            continue
        # Committed, but the answer was lost with objectd: it must be whole.
        got, n, _ = sha_of(key)
        if (got, n, size) != (attempted[key]["sha256"], SIZE, SIZE):
            problems.append(f"listed unacknowledged {key} is partial or wrong: {n} bytes, listed size {size}")
        else:
            print(f"note: {key} was committed although its answer was lost in the crash (whole and correct)")
    for key in sorted(set(attempted) - set(listed)):
        try:
            c.head_object(Bucket=BUCKET, Key=key)
            problems.append(f"{key} is readable but not listed")
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
                problems.append(f"{key}: HEAD answered {e.response['ResponseMetadata']['HTTPStatusCode']}, not 404")
        try:
            c.get_object(Bucket=BUCKET, Key=key)
            problems.append(f"{key} (not acknowledged, not listed) is readable")
        except ClientError as e:
            if e.response["Error"]["Code"] != "NoSuchKey":
                problems.append(f"{key}: GET answered {e.response['Error']['Code']}, not NoSuchKey")

    uploads = c.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    for u in uploads:
        if u["Key"] not in attempted or not attempted[u["Key"]]["multipart"]:
            problems.append(f"an upload for {u['Key']} that was never started")
        c.abort_multipart_upload(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"])
    left = c.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if left:
        problems.append(f"uploads left after abort: {left}")

    print(f"acknowledged {len(acked)}, attempted {len(attempted)}, listed {len(listed)}, "
          f"uploads aborted {len(uploads)}")
    if problems:
        for p in problems:
            print("PROBLEM:", p)
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("upload", "verify"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        (upload if sys.argv[1] == "upload" else verify)(sys.argv[2])
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)

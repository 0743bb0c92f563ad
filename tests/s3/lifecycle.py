"""S3 load for the lifecycle tests (tests/tests/lifecycle.rs): writes that crashes interrupt, and
the check that every acknowledged one survived.

  lifecycle.py load LEDGER     runs until LEDGER.stop exists: THREADS threads, each owning KEYS keys
                               of bucket LIFE_BUCKET, do random PUTs (0 B .. 3 MiB), overwrites,
                               DELETEs and multipart uploads (a 5 MiB part and a small one). Before
                               an operation it appends {"k", "st": "begin", "h", "n"} to LEDGER
                               (h: sha256 of the body, or null for a delete), and only once it is
                               acknowledged {"k", "st": "ack", "h", "n"}. Errors are expected
                               while the system is down: the thread sleeps and goes on. While
                               LEDGER.pause exists the threads stop between operations and
                               LEDGER.paused appears once all are idle. A failed operation
                               appends {"k", "st": "err", "e"} (its outcome is unknown). A PUT
                               answered with an ETag not its own is such an error marked
                               "bogus": the check counts it as wrong (an answer that was not
                               this request's, as botocore#3755 produced).
  lifecycle.py verify LEDGER   for every key: the object reads back whole (as many bytes as its
                               Content-Length says) and is the last acknowledged state, or one
                               begun after it (an operation whose answer the crash cut off).
                               Never a partial body, never another state. Appends {"st": "seen"}
                               records of what it found (what a later check builds on) and prints
                               one JSON line: keys, acked, lost, wrong, partial.
Env: LIFE_BUCKET (default life), LIFE_THREADS (3), LIFE_KEYS (6), plus the usual AWS_* variables.
"""

import hashlib
import http.client
import json
import os
import random
import sys
import threading
import time

from botocore.exceptions import BotoCoreError, ClientError

from common import MiB, client

BUCKET = os.environ.get("LIFE_BUCKET", "life")
THREADS = int(os.environ.get("LIFE_THREADS", "3"))
KEYS = int(os.environ.get("LIFE_KEYS", "6"))
PART = 5 * MiB

_lock = threading.Lock()


def append(path, rec):
    rec["t"] = round(time.time(), 3)
    with _lock:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def body(rng):
    n = rng.choice([0, 1, 100, 4096, 70000, 1 << 20, (1 << 20) + 12345, 3 * MiB])
    return rng.randbytes(n)


def ensure_bucket(c):
    while True:
        try:
            c.create_bucket(Bucket=BUCKET)
            return
        except ClientError as e:
            if e.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            time.sleep(0.5)
        except BotoCoreError:
            time.sleep(0.5)


def worker(ledger, t, stop, idle):
    rng = random.Random(os.getpid() * 1000 + t)
    c = client(connect_timeout=3, read_timeout=120)
    keys = [f"t{t}/k{i}" for i in range(KEYS)]
    pause = ledger + ".pause"
    while not os.path.exists(stop):
        if os.path.exists(pause):
            idle.set()
            time.sleep(0.05)
            continue
        idle.clear()
        k = rng.choice(keys)
        op = rng.choices(["put", "mpu", "del"], weights=[6, 1, 2])[0]
        if op == "del":
            data, h, n = None, None, 0
        elif op == "put":
            data = body(rng)
            h, n = sha(data), len(data)
        else:  # multipart: a 5 MiB part, then the last (smaller) one; h names both together
            data = (rng.randbytes(PART), body(rng))
            h, n = sha(data[0] + data[1]), PART + len(data[1])
        append(ledger, {"k": k, "st": "begin", "op": op, "h": h, "n": n})
        try:
            if op == "put":
                etag = c.put_object(Bucket=BUCKET, Key=k, Body=data).get("ETag")
                if etag != f'"{hashlib.md5(data).hexdigest()}"':
                    # Not this PUT's answer (botocore#3755 reads a stale status on a reused
                    # connection): its outcome is unknown, and the check reports it.
                    append(ledger, {"k": k, "st": "err", "op": op, "e": f"answer with ETag {etag}", "bogus": True})
                    continue
            elif op == "del":
                c.delete_object(Bucket=BUCKET, Key=k)
            else:
                up = c.create_multipart_upload(Bucket=BUCKET, Key=k)["UploadId"]
                e1 = c.upload_part(Bucket=BUCKET, Key=k, UploadId=up, PartNumber=1, Body=data[0])["ETag"]
                e2 = c.upload_part(Bucket=BUCKET, Key=k, UploadId=up, PartNumber=2, Body=data[1])["ETag"]
                c.complete_multipart_upload(
                    Bucket=BUCKET,
                    Key=k,
                    UploadId=up,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
                )
        except (ClientError, BotoCoreError, http.client.HTTPException, OSError) as e:
            append(ledger, {"k": k, "st": "err", "op": op, "e": str(e)[:200]})
            time.sleep(0.3)
            continue
        append(ledger, {"k": k, "st": "ack", "op": op, "h": h, "n": n})
    idle.set()


def load(ledger):
    ensure_bucket(client(connect_timeout=3, read_timeout=60))
    stop = ledger + ".stop"
    idles = [threading.Event() for _ in range(THREADS)]
    threads = [threading.Thread(target=worker, args=(ledger, t, stop, idles[t]), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    paused = ledger + ".paused"
    while any(th.is_alive() for th in threads):
        if os.path.exists(ledger + ".pause") and all(e.is_set() for e in idles):
            if not os.path.exists(paused):
                open(paused, "w").close()
        elif os.path.exists(paused) and not os.path.exists(ledger + ".pause"):
            os.remove(paused)
        time.sleep(0.05)


def allowed_states(ledger):
    """key -> (allowed set of states, has an acknowledged or seen state); a state is a sha256 or
    None (absent)."""
    out = {}
    with open(ledger) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            k = r["k"]
            cur = out.setdefault(k, {"settled": None, "begun": [], "known": False})
            if r["st"] == "err":
                continue
            if r["st"] == "begin":
                cur["begun"].append(r["h"])
            else:  # ack or seen: the state from here on
                cur["settled"] = r["h"]
                cur["known"] = True
                cur["begun"] = []
    return {k: ({v["settled"], *v["begun"]}, v["known"], v["settled"]) for k, v in out.items()}


def read_whole(c, k):
    """(sha256 or None when absent, partial?)."""
    try:
        r = c.get_object(Bucket=BUCKET, Key=k)
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None, False
        raise
    want = r["ContentLength"]
    b = b""
    try:
        b = r["Body"].read()
    except (BotoCoreError, http.client.HTTPException, OSError) as e:
        print(f"{k}: body read failed after {len(b)} of {want} bytes: {e}", file=sys.stderr)
        return None, True
    if len(b) != want:
        print(f"{k}: {len(b)} bytes of {want}", file=sys.stderr)
        return None, True
    return sha(b), False


def verify(ledger):
    c = client(connect_timeout=5, read_timeout=120)
    states = allowed_states(ledger)
    lost = wrong = partial = 0
    with open(ledger) as f:
        lines = f.readlines()
    acked = sum(1 for line in lines if '"st": "ack"' in line)
    for line in lines:
        if '"bogus": true' in line:
            wrong += 1
            print(f"PUT answered with another request's answer: {line.strip()}", file=sys.stderr)
    for k in sorted(states):
        allowed, known, settled = states[k]
        got, cut = None, True
        for attempt in range(3):
            got, cut = read_whole(c, k)
            if not cut:
                break
            time.sleep(1)
        if cut:
            partial += 1
            continue
        if got in allowed:
            append(ledger, {"k": k, "st": "seen", "h": got})
            continue
        if got is None and settled is not None:
            lost += 1
            print(f"{k}: LOST: acknowledged {settled}, absent now (allowed {allowed})", file=sys.stderr)
        else:
            wrong += 1
            print(f"{k}: WRONG: {got} is none of {allowed}", file=sys.stderr)
    # Listing agrees: every listed key is one the ledger knows.
    listed = set()
    token = None
    while True:
        kw = {"Bucket": BUCKET}
        if token:
            kw["ContinuationToken"] = token
        page = c.list_objects_v2(**kw)
        listed |= {o["Key"] for o in page.get("Contents", [])}
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    strangers = listed - set(states)
    wrong += len(strangers)
    for s in sorted(strangers):
        print(f"{s}: WRONG: listed, never written", file=sys.stderr)
    print(json.dumps({"keys": len(states), "acked": acked, "lost": lost, "wrong": wrong, "partial": partial}))


if __name__ == "__main__":
    mode, ledger = sys.argv[1], sys.argv[2]
    if mode == "load":
        load(ledger)
    elif mode == "verify":
        verify(ledger)
    else:
        sys.exit(f"unknown mode {mode}")

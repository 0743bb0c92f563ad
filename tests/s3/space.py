"""S3 side of the space test (tests/tests/space_reclaim.rs): objects overwritten or deleted give
their chunks back at once, while content another object shares stays.

  space.py setup DIR    PUTs a (2 MiB), b and c (1 MiB each); keeps their bodies in DIR; starts
                        multipart uploads m (two parts) and p (one part)
  space.py churn DIR    PUTs `shared` with c's body, overwrites a, deletes b and c, aborts m,
                        uploads p's part 1 again with another body
  space.py verify DIR   a reads back as its new body, `shared` as c's old one; b and c are gone;
                        p completes with its second part 1
Env: the usual AWS_* variables.
"""

import os
import sys

from common import MiB, assert_s3_error, client

BUCKET = "space"


def put(c, d, key, n):
    body = os.urandom(n)
    with open(os.path.join(d, key), "wb") as f:
        f.write(body)
    c.put_object(Bucket=BUCKET, Key=key, Body=body)


def body_of(d, key):
    with open(os.path.join(d, key), "rb") as f:
        return f.read()


def main(mode, d):
    c = client()
    if mode == "setup":
        c.create_bucket(Bucket=BUCKET)
        put(c, d, "a", 2 * MiB)
        put(c, d, "b", MiB)
        put(c, d, "c", MiB)
        for key, parts in (("m", 2), ("p", 1)):
            up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
            with open(os.path.join(d, f"{key}.id"), "w") as f:
                f.write(up)
            for n in range(1, parts + 1):
                c.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n, Body=os.urandom(MiB))
    elif mode == "churn":
        c.put_object(Bucket=BUCKET, Key="shared", Body=body_of(d, "c"))
        put(c, d, "a", 2 * MiB)
        c.delete_object(Bucket=BUCKET, Key="b")
        c.delete_object(Bucket=BUCKET, Key="c")
        c.abort_multipart_upload(Bucket=BUCKET, Key="m", UploadId=body_of(d, "m.id").decode())
        body = os.urandom(MiB)
        with open(os.path.join(d, "p"), "wb") as f:
            f.write(body)
        c.upload_part(Bucket=BUCKET, Key="p", UploadId=body_of(d, "p.id").decode(), PartNumber=1, Body=body)
    elif mode == "verify":
        assert c.get_object(Bucket=BUCKET, Key="a")["Body"].read() == body_of(d, "a"), "a is not its new body"
        assert c.get_object(Bucket=BUCKET, Key="shared")["Body"].read() == body_of(d, "c"), "shared lost c's body"
        for k in ("b", "c"):
            assert_s3_error(lambda k=k: c.get_object(Bucket=BUCKET, Key=k), "NoSuchKey", 404)
        up = body_of(d, "p.id").decode()
        etag = c.list_parts(Bucket=BUCKET, Key="p", UploadId=up)["Parts"][0]["ETag"]
        c.complete_multipart_upload(Bucket=BUCKET, Key="p", UploadId=up,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert c.get_object(Bucket=BUCKET, Key="p")["Body"].read() == body_of(d, "p"), "p is not its second part"
        print("verified")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""S3 side of the space test (tests/tests/space_reclaim.rs): objects overwritten or deleted give
their chunks back at once, while content another object shares stays.

  space.py setup DIR    PUTs a (2 MiB), b and c (1 MiB each); keeps their bodies in DIR
  space.py churn DIR    PUTs `shared` with c's body, overwrites a, deletes b and c
  space.py verify DIR   a reads back as its new body, `shared` as c's old one; b and c are gone
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
    elif mode == "churn":
        c.put_object(Bucket=BUCKET, Key="shared", Body=body_of(d, "c"))
        put(c, d, "a", 2 * MiB)
        c.delete_object(Bucket=BUCKET, Key="b")
        c.delete_object(Bucket=BUCKET, Key="c")
    elif mode == "verify":
        assert c.get_object(Bucket=BUCKET, Key="a")["Body"].read() == body_of(d, "a"), "a is not its new body"
        assert c.get_object(Bucket=BUCKET, Key="shared")["Body"].read() == body_of(d, "c"), "shared lost c's body"
        for k in ("b", "c"):
            assert_s3_error(lambda k=k: c.get_object(Bucket=BUCKET, Key=k), "NoSuchKey", 404)
        print("verified")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

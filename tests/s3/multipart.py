"""Multipart uploads: a 100 MiB object in 20 parts uploaded out of order and concurrently,
the multipart ETag, ListParts, ListMultipartUploads, abort, EntityTooSmall, InvalidPart,
InvalidPartOrder, UploadPartCopy with ranges, re-uploading a part, and (when
S3_MPU_EXPIRY_SECS is set, matching objectd's --mpu-expiry-secs) the expiry sweep."""

import hashlib
import os
import random
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from common import MiB, assert_s3_error, body_sha256, client, main, md5_hex, unique_bucket


def multipart_etag(parts):
    return '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f'-{len(parts)}"'


class Multipart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("mpu")
        cls.c.create_bucket(Bucket=cls.b)

    def start(self, key, **kw):
        return self.c.create_multipart_upload(Bucket=self.b, Key=key, **kw)["UploadId"]

    def part(self, key, up, n, data):
        return self.c.upload_part(Bucket=self.b, Key=key, UploadId=up, PartNumber=n, Body=data)["ETag"]

    def complete(self, key, up, parts):
        return self.c.complete_multipart_upload(
            Bucket=self.b, Key=key, UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    def test_100_mib_out_of_order_concurrent(self):
        key = "big/100"
        parts = [os.urandom(5 * MiB) for _ in range(20)]
        up = self.start(key, ContentType="application/x-test", Metadata={"origin": "mpu"})
        order = list(range(1, 21))
        random.Random(7).shuffle(order)
        etags = {}

        def send(n):
            etags[n] = self.part(key, up, n, parts[n - 1])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, order))
        for n in range(1, 21):
            self.assertEqual(etags[n], f'"{md5_hex(parts[n - 1])}"', f"part {n}")
        r = self.complete(key, up, [(n, etags[n]) for n in range(1, 21)])
        want = multipart_etag(parts)
        self.assertEqual(r["ETag"], want)
        self.assertRegex(r["ETag"], r'^"[0-9a-f]{32}-20"$')
        h = self.c.head_object(Bucket=self.b, Key=key)
        self.assertEqual((h["ETag"], h["ContentLength"]), (want, 100 * MiB))
        self.assertEqual(h["ContentType"], "application/x-test")
        self.assertEqual(h["Metadata"], {"origin": "mpu"})
        full = hashlib.sha256()
        for p in parts:
            full.update(p)
        self.assertEqual(body_sha256(self.c.get_object(Bucket=self.b, Key=key)), (full.hexdigest(), 100 * MiB))
        # a range across a part boundary
        g = self.c.get_object(Bucket=self.b, Key=key, Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")
        self.assertEqual(g["Body"].read(), parts[0][-10:] + parts[1][:10])
        listed = self.c.list_objects_v2(Bucket=self.b, Prefix=key)["Contents"]
        self.assertEqual([(o["Key"], o["Size"], o["ETag"]) for o in listed], [(key, 100 * MiB, want)])
        # the upload is gone once completed
        assert_s3_error(lambda: self.c.list_parts(Bucket=self.b, Key=key, UploadId=up), "NoSuchUpload", 404)
        self.assertNotIn(up, [u["UploadId"] for u in self.c.list_multipart_uploads(Bucket=self.b).get("Uploads", [])])

    def test_list_parts_and_uploads_then_abort(self):
        key = "listed/obj"
        up = self.start(key)
        data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
        etags = [self.part(key, up, n, d) for n, d in enumerate(data, 1)]
        r = self.c.list_parts(Bucket=self.b, Key=key, UploadId=up)
        self.assertEqual([(p["PartNumber"], p["ETag"], p["Size"]) for p in r["Parts"]],
                         [(n, e, len(d)) for n, (e, d) in enumerate(zip(etags, data), 1)])
        self.assertFalse(r["IsTruncated"])
        r = self.c.list_parts(Bucket=self.b, Key=key, UploadId=up, MaxParts=2)
        self.assertEqual([p["PartNumber"] for p in r["Parts"]], [1, 2])
        self.assertTrue(r["IsTruncated"])
        r = self.c.list_parts(Bucket=self.b, Key=key, UploadId=up, PartNumberMarker=r["NextPartNumberMarker"])
        self.assertEqual([p["PartNumber"] for p in r["Parts"]], [3])

        up2 = self.start("listed/other")
        ups = self.c.list_multipart_uploads(Bucket=self.b)["Uploads"]
        self.assertIn((key, up), [(u["Key"], u["UploadId"]) for u in ups])
        self.assertIn(("listed/other", up2), [(u["Key"], u["UploadId"]) for u in ups])
        ups = self.c.list_multipart_uploads(Bucket=self.b, Prefix="listed/o")["Uploads"]
        self.assertEqual([u["Key"] for u in ups], ["listed/obj", "listed/other"])
        self.assertEqual(self.c.list_objects_v2(Bucket=self.b, Prefix="listed/")["KeyCount"], 0,
                         "uploads in progress are not objects")
        assert_s3_error(lambda: self.c.get_object(Bucket=self.b, Key=key), "NoSuchKey", 404)

        r = self.c.abort_multipart_upload(Bucket=self.b, Key=key, UploadId=up)
        self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 204)
        assert_s3_error(lambda: self.c.list_parts(Bucket=self.b, Key=key, UploadId=up), "NoSuchUpload", 404)
        assert_s3_error(lambda: self.complete(key, up, [(1, etags[0])]), "NoSuchUpload", 404)
        assert_s3_error(lambda: self.part(key, up, 4, b"late"), "NoSuchUpload", 404)
        self.assertNotIn(up, [u["UploadId"] for u in self.c.list_multipart_uploads(Bucket=self.b).get("Uploads", [])])
        self.c.abort_multipart_upload(Bucket=self.b, Key="listed/other", UploadId=up2)
        assert_s3_error(lambda: self.c.abort_multipart_upload(Bucket=self.b, Key=key, UploadId="no-such-upload-id"),
                        "NoSuchUpload", 404)

    def test_entity_too_small(self):
        key = "small"
        up = self.start(key)
        e1 = self.part(key, up, 1, os.urandom(MiB))
        e2 = self.part(key, up, 2, os.urandom(MiB))
        assert_s3_error(lambda: self.complete(key, up, [(1, e1), (2, e2)]), "EntityTooSmall", 400)
        assert_s3_error(lambda: self.c.get_object(Bucket=self.b, Key=key), "NoSuchKey", 404)
        # a single small part is fine (the last part may be small)
        up = self.start(key)
        e = self.part(key, up, 1, b"tiny")
        r = self.complete(key, up, [(1, e)])
        self.assertEqual(r["ETag"], multipart_etag([b"tiny"]))
        self.assertEqual(self.c.get_object(Bucket=self.b, Key=key)["Body"].read(), b"tiny")

    def test_invalid_part_and_order(self):
        key = "invalid"
        up = self.start(key)
        p1, p2 = os.urandom(5 * MiB), os.urandom(5 * MiB)  # both full size: only the order is wrong
        e1, e2 = self.part(key, up, 1, p1), self.part(key, up, 2, p2)
        assert_s3_error(lambda: self.complete(key, up, [(1, e1), (2, '"0123456789abcdef0123456789abcdef"')]),
                        "InvalidPart", 400)
        assert_s3_error(lambda: self.complete(key, up, [(1, e1), (3, e2)]), "InvalidPart", 400)
        assert_s3_error(lambda: self.complete(key, up, [(2, e2), (1, e1)]), "InvalidPartOrder", 400)
        # the upload survives failed completes
        r = self.complete(key, up, [(1, e1), (2, e2)])
        self.assertEqual(r["ETag"], multipart_etag([p1, p2]))
        self.assertEqual(body_sha256(self.c.get_object(Bucket=self.b, Key=key)),
                         (hashlib.sha256(p1 + p2).hexdigest(), len(p1) + len(p2)))

    def test_complete_with_a_subset_of_parts(self):
        key = "subset"
        up = self.start(key)
        parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(10)]
        etags = [self.part(key, up, n, d) for n, d in enumerate(parts, 1)]
        self.complete(key, up, [(1, etags[0]), (3, etags[2])])
        body = self.c.get_object(Bucket=self.b, Key=key)["Body"].read()
        self.assertEqual(body, parts[0] + parts[2])

    def test_upload_part_copy_with_ranges(self):
        src = os.urandom(12 * MiB)
        self.c.put_object(Bucket=self.b, Key="copysrc", Body=src)
        key = "copied"
        up = self.start(key)
        r1 = self.c.upload_part_copy(Bucket=self.b, Key=key, UploadId=up, PartNumber=1,
                                     CopySource={"Bucket": self.b, "Key": "copysrc"},
                                     CopySourceRange=f"bytes=0-{5 * MiB - 1}")
        self.assertEqual(r1["CopyPartResult"]["ETag"], f'"{md5_hex(src[:5 * MiB])}"')
        r2 = self.c.upload_part_copy(Bucket=self.b, Key=key, UploadId=up, PartNumber=2,
                                     CopySource={"Bucket": self.b, "Key": "copysrc"},
                                     CopySourceRange=f"bytes={6 * MiB}-{12 * MiB - 1}")
        tail = os.urandom(1234)
        e3 = self.part(key, up, 3, tail)
        self.complete(key, up, [(1, r1["CopyPartResult"]["ETag"]), (2, r2["CopyPartResult"]["ETag"]), (3, e3)])
        want = src[:5 * MiB] + src[6 * MiB:] + tail
        self.assertEqual(body_sha256(self.c.get_object(Bucket=self.b, Key=key)),
                         (hashlib.sha256(want).hexdigest(), len(want)))
        # a whole-object part copy, and a range past the end
        up = self.start("copied2")
        r = self.c.upload_part_copy(Bucket=self.b, Key="copied2", UploadId=up, PartNumber=1,
                                    CopySource={"Bucket": self.b, "Key": "copysrc"})
        self.assertEqual(r["CopyPartResult"]["ETag"], f'"{md5_hex(src)}"')
        assert_s3_error(lambda: self.c.upload_part_copy(Bucket=self.b, Key="copied2", UploadId=up, PartNumber=2,
                                                        CopySource={"Bucket": self.b, "Key": "copysrc"},
                                                        CopySourceRange=f"bytes={12 * MiB}-{13 * MiB}"),
                        "InvalidRange", 416)
        self.c.abort_multipart_upload(Bucket=self.b, Key="copied2", UploadId=up)

    def test_reuploading_a_part_replaces_it(self):
        key = "replaced"
        up = self.start(key)
        a, b, tail = os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(99)
        ea = self.part(key, up, 1, a)
        eb = self.part(key, up, 1, b)
        self.assertNotEqual(ea, eb)
        et = self.part(key, up, 2, tail)
        parts = self.c.list_parts(Bucket=self.b, Key=key, UploadId=up)["Parts"]
        self.assertEqual([(p["PartNumber"], p["ETag"]) for p in parts], [(1, eb), (2, et)])
        assert_s3_error(lambda: self.complete(key, up, [(1, ea), (2, et)]), "InvalidPart", 400)
        self.complete(key, up, [(1, eb), (2, et)])
        self.assertEqual(body_sha256(self.c.get_object(Bucket=self.b, Key=key)),
                         (hashlib.sha256(b + tail).hexdigest(), len(b) + len(tail)))

    def test_part_number_limits(self):
        up = self.start("limits")
        for n in (0, 10001):
            with self.subTest(part=n):
                assert_s3_error(lambda: self.part("limits", up, n, b"x"), "InvalidArgument", 400)
        self.c.abort_multipart_upload(Bucket=self.b, Key="limits", UploadId=up)

    def test_overwrite_by_multipart_then_single(self):
        key = "over"
        self.c.put_object(Bucket=self.b, Key=key, Body=b"single")
        up = self.start(key)
        e = self.part(key, up, 1, b"multi")
        self.assertEqual(self.c.get_object(Bucket=self.b, Key=key)["Body"].read(), b"single")
        self.complete(key, up, [(1, e)])
        self.assertEqual(self.c.get_object(Bucket=self.b, Key=key)["Body"].read(), b"multi")
        self.c.put_object(Bucket=self.b, Key=key, Body=b"single again")
        self.assertEqual(self.c.get_object(Bucket=self.b, Key=key)["Body"].read(), b"single again")


@unittest.skipUnless(os.environ.get("S3_MPU_EXPIRY_SECS"), "S3_MPU_EXPIRY_SECS is not set (objectd's --mpu-expiry-secs)")
class Expiry(unittest.TestCase):
    def test_stale_uploads_are_aborted_by_the_sweep(self):
        c = client()
        b = unique_bucket("exp")
        c.create_bucket(Bucket=b)
        up = c.create_multipart_upload(Bucket=b, Key="stale")["UploadId"]
        c.upload_part(Bucket=b, Key="stale", UploadId=up, PartNumber=1, Body=os.urandom(1000))
        expiry = float(os.environ["S3_MPU_EXPIRY_SECS"])
        deadline = time.monotonic() + expiry + 60
        while True:
            uploads = [u["UploadId"] for u in c.list_multipart_uploads(Bucket=b).get("Uploads", [])]
            if up not in uploads:
                break
            self.assertLess(time.monotonic(), deadline, "the upload was not aborted by the expiry sweep")
            time.sleep(0.5)
        assert_s3_error(lambda: c.list_parts(Bucket=b, Key="stale", UploadId=up), "NoSuchUpload", 404)
        # the bucket holds nothing now
        c.delete_bucket(Bucket=b)


if __name__ == "__main__":
    main()

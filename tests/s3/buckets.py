"""Buckets: create, name rules, conflicts, head, list, location, versioning settings, delete,
and NoSuchBucket for every kind of operation on a missing bucket."""

import unittest

from common import assert_s3_error, client, main, raw_request, assert_raw_error, unique_bucket


class Buckets(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()

    def test_create_head_list_delete(self):
        b = unique_bucket("b")
        r = self.c.create_bucket(Bucket=b)
        self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 200)
        self.assertEqual(self.c.head_bucket(Bucket=b)["ResponseMetadata"]["HTTPStatusCode"], 200)
        listed = self.c.list_buckets()
        names = [x["Name"] for x in listed["Buckets"]]
        self.assertIn(b, names)
        self.assertEqual(names, sorted(names), "ListBuckets is in name order")
        mine = [x for x in listed["Buckets"] if x["Name"] == b][0]
        self.assertIn("CreationDate", mine)
        self.c.delete_bucket(Bucket=b)
        assert_s3_error(lambda: self.c.head_bucket(Bucket=b), "404", 404)
        self.assertNotIn(b, [x["Name"] for x in self.c.list_buckets()["Buckets"]])

    def test_create_with_location_constraint(self):
        b = unique_bucket("loc")
        self.c.create_bucket(Bucket=b)
        loc = self.c.get_bucket_location(Bucket=b).get("LocationConstraint")
        # S3 answers an empty LocationConstraint (None) for us-east-1.
        self.assertIn(loc, (None, "", "us-east-1"))
        self.c.delete_bucket(Bucket=b)

    def test_invalid_names(self):
        for name in ["ab", "UPPER", "a..b", "-ab", "ab-", "192.168.1.1", "a" * 64, "a_b", "a.-b"]:
            with self.subTest(name=name):
                assert_s3_error(lambda: self.c.create_bucket(Bucket=name), "InvalidBucketName", 400)
        # the edges that are valid
        for name in ["abc", "a" * 63, "a.b-c.d1"]:
            with self.subTest(name=name):
                self.c.create_bucket(Bucket=name)
                self.c.head_bucket(Bucket=name)
                self.c.delete_bucket(Bucket=name)

    def test_create_twice_by_owner(self):
        b = unique_bucket("twice")
        self.c.create_bucket(Bucket=b)
        assert_s3_error(lambda: self.c.create_bucket(Bucket=b), "BucketAlreadyOwnedByYou", 409)
        self.c.delete_bucket(Bucket=b)

    def test_delete_non_empty(self):
        b = unique_bucket("full")
        self.c.create_bucket(Bucket=b)
        self.c.put_object(Bucket=b, Key="k", Body=b"x")
        assert_s3_error(lambda: self.c.delete_bucket(Bucket=b), "BucketNotEmpty", 409)
        self.c.head_bucket(Bucket=b)
        self.assertEqual(self.c.get_object(Bucket=b, Key="k")["Body"].read(), b"x")
        self.c.delete_object(Bucket=b, Key="k")
        self.c.delete_bucket(Bucket=b)

    def test_delete_bucket_with_only_an_upload_in_progress(self):
        b = unique_bucket("mpu")
        self.c.create_bucket(Bucket=b)
        up = self.c.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
        self.c.upload_part(Bucket=b, Key="k", UploadId=up, PartNumber=1, Body=b"part")
        assert_s3_error(lambda: self.c.delete_bucket(Bucket=b), "BucketNotEmpty", 409)
        self.c.abort_multipart_upload(Bucket=b, Key="k", UploadId=up)
        self.c.delete_bucket(Bucket=b)

    def test_delete_versioned_bucket_with_versions(self):
        b = unique_bucket("vfull")
        self.c.create_bucket(Bucket=b)
        self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        self.c.put_object(Bucket=b, Key="k", Body=b"x")
        self.c.delete_object(Bucket=b, Key="k")  # only a delete marker is current
        self.assertEqual(self.c.list_objects_v2(Bucket=b)["KeyCount"], 0)
        assert_s3_error(lambda: self.c.delete_bucket(Bucket=b), "BucketNotEmpty", 409)
        vs = self.c.list_object_versions(Bucket=b)
        for v in vs.get("Versions", []) + vs.get("DeleteMarkers", []):
            self.c.delete_object(Bucket=b, Key=v["Key"], VersionId=v["VersionId"])
        self.c.delete_bucket(Bucket=b)

    def test_versioning_settings(self):
        b = unique_bucket("ver")
        self.c.create_bucket(Bucket=b)
        self.assertNotIn("Status", self.c.get_bucket_versioning(Bucket=b))
        self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        self.assertEqual(self.c.get_bucket_versioning(Bucket=b)["Status"], "Enabled")
        self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
        self.assertEqual(self.c.get_bucket_versioning(Bucket=b)["Status"], "Suspended")
        self.c.delete_bucket(Bucket=b)

    def test_missing_bucket(self):
        b = unique_bucket("missing")
        c = self.c
        ops = {
            "get_object": lambda: c.get_object(Bucket=b, Key="k"),
            "put_object": lambda: c.put_object(Bucket=b, Key="k", Body=b"x"),
            "delete_object": lambda: c.delete_object(Bucket=b, Key="k"),
            "list_objects_v2": lambda: c.list_objects_v2(Bucket=b),
            "list_objects": lambda: c.list_objects(Bucket=b),
            "list_object_versions": lambda: c.list_object_versions(Bucket=b),
            "delete_bucket": lambda: c.delete_bucket(Bucket=b),
            "get_bucket_versioning": lambda: c.get_bucket_versioning(Bucket=b),
            "put_bucket_versioning": lambda: c.put_bucket_versioning(
                Bucket=b, VersioningConfiguration={"Status": "Enabled"}),
            "get_bucket_location": lambda: c.get_bucket_location(Bucket=b),
            "create_multipart_upload": lambda: c.create_multipart_upload(Bucket=b, Key="k"),
            "list_multipart_uploads": lambda: c.list_multipart_uploads(Bucket=b),
            "delete_objects": lambda: c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k"}]}),
        }
        for name, op in ops.items():
            with self.subTest(op=name):
                assert_s3_error(op, "NoSuchBucket", 404)
        assert_s3_error(lambda: c.head_bucket(Bucket=b), "404", 404)
        assert_s3_error(lambda: c.head_object(Bucket=b, Key="k"), "404", 404)
        src = unique_bucket("src")
        c.create_bucket(Bucket=src)
        c.put_object(Bucket=src, Key="k", Body=b"x")
        assert_s3_error(lambda: c.copy_object(Bucket=b, Key="k", CopySource={"Bucket": src, "Key": "k"}),
                        "NoSuchBucket", 404)
        assert_s3_error(lambda: c.copy_object(Bucket=src, Key="k2", CopySource={"Bucket": b, "Key": "k"}),
                        "NoSuchBucket", 404)

    def test_virtual_hosted_bucket_listing(self):
        b = unique_bucket("vh")
        self.c.create_bucket(Bucket=b)
        self.c.put_object(Bucket=b, Key="one", Body=b"1")
        r = raw_request("GET", b, None, query="list-type=2", vhost=True)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"<Key>one</Key>", r.body)
        self.assertIn(f"<Name>{b}</Name>".encode(), r.body)
        r = raw_request("HEAD", b, None, vhost=True)
        self.assertEqual(r.status, 200, r)
        missing = unique_bucket("vhmissing")
        assert_raw_error(raw_request("GET", missing, None, query="list-type=2", vhost=True), "NoSuchBucket", 404)


if __name__ == "__main__":
    main()

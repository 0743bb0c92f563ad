"""Listing markers are positions, not references: emptying buckets page by page the way
`aws s3 rb --force` and boto3's `bucket.object_versions.delete()` do (each page deleted before
the next is asked for, resuming after entries that are gone) leaves them empty."""

from common import *


class PageByPageDelete(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.r = boto3.session.Session().resource(
            "s3", endpoint_url=ENDPOINT, region_name=REGION, aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}),
        )

    def fill(self, versioned):
        b = unique_bucket("pbd")
        self.c.create_bucket(Bucket=b)
        if versioned:
            self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        for i in range(10):
            k = f"d{i % 3}/k{i:02}"
            for v in range(3 if versioned else 1):
                self.c.put_object(Bucket=b, Key=k, Body=f"{k} v{v}".encode())
            if versioned and i % 4 == 0:
                self.c.delete_object(Bucket=b, Key=k)  # a delete marker on top
        return b

    def assert_empty(self, b):
        r = self.c.list_object_versions(Bucket=b)
        self.assertEqual(r.get("Versions", []) + r.get("DeleteMarkers", []), [])
        self.assertEqual(self.c.list_objects_v2(Bucket=b)["KeyCount"], 0)
        self.c.delete_bucket(Bucket=b)

    def test_object_versions_delete_in_small_pages(self):
        for versioned in (True, False):
            for page in (2, 3):
                with self.subTest(versioned=versioned, page=page):
                    b = self.fill(versioned)
                    self.r.Bucket(b).object_versions.page_size(page).delete()
                    self.assert_empty(b)

    def test_objects_delete_in_small_pages(self):
        # ListObjects (v1) with markers, as the resource API pages.
        for page in (2, 3):
            b = self.fill(False)
            self.r.Bucket(b).objects.page_size(page).delete()
            self.assert_empty(b)

    def test_v2_and_v1_pages_deleted_as_listed(self):
        for method, token in (("list_objects_v2", "ContinuationToken"), ("list_objects", "Marker")):
            for delimiter in ("", "/"):
                with self.subTest(method=method, delimiter=delimiter):
                    b = self.fill(False)
                    kw = {"Bucket": b, "MaxKeys": 2}
                    if delimiter:
                        kw["Delimiter"] = delimiter
                    for p in self.c.get_paginator(method).paginate(**kw, PaginationConfig={"PageSize": 2}):
                        objs = [{"Key": o["Key"]} for o in p.get("Contents", [])]
                        if objs:
                            self.c.delete_objects(Bucket=b, Delete={"Objects": objs, "Quiet": True})
                    if delimiter:
                        # The common prefixes were listed once each; delete what they hold.
                        for p in self.c.get_paginator(method).paginate(Bucket=b, PaginationConfig={"PageSize": 3}):
                            objs = [{"Key": o["Key"]} for o in p.get("Contents", [])]
                            if objs:
                                self.c.delete_objects(Bucket=b, Delete={"Objects": objs, "Quiet": True})
                    self.assert_empty(b)

    def test_start_after_and_markers_that_never_existed(self):
        b = self.fill(True)
        keys = sorted({f"d{i % 3}/k{i:02}" for i in range(10) if i % 4})  # the others end in a delete marker
        r = self.c.list_objects_v2(Bucket=b, StartAfter="d1/k00-gone")
        self.assertEqual([o["Key"] for o in r.get("Contents", [])], [k for k in keys if k > "d1/k00-gone"])
        r = self.c.list_objects(Bucket=b, Marker="d0/zz")
        self.assertEqual([o["Key"] for o in r.get("Contents", [])], [k for k in keys if k > "d0/zz"])
        # A well-formed version id that was never a version of that key is a position too.
        r = self.c.list_object_versions(Bucket=b, KeyMarker="d1/k01", VersionIdMarker="f" * 24)
        self.assertTrue(all(v["Key"] > "d1/k01" for v in r.get("Versions", []) + r.get("DeleteMarkers", [])))
        assert_s3_error(lambda: self.c.list_object_versions(Bucket=b, KeyMarker="d1/k01", VersionIdMarker="nope"),
                        "InvalidArgument", 400)
        self.r.Bucket(b).object_versions.delete()
        self.assert_empty(b)

    def test_version_pages_resume_in_a_key_whose_marker_version_went(self):
        b = self.fill(True)
        r = self.c.list_object_versions(Bucket=b, MaxKeys=2)
        self.assertTrue(r["IsTruncated"])
        nk, nv = r["NextKeyMarker"], r["NextVersionIdMarker"]
        seen = [(v["Key"], v["VersionId"]) for v in r.get("Versions", []) + r.get("DeleteMarkers", [])]
        for k, v in seen:
            self.c.delete_object(Bucket=b, Key=k, VersionId=v)
        r2 = self.c.list_object_versions(Bucket=b, KeyMarker=nk, VersionIdMarker=nv)
        rest = [(v["Key"], v["VersionId"], v["IsLatest"]) for v in r2.get("Versions", []) + r2.get("DeleteMarkers", [])]
        self.assertTrue(rest, "the listing goes on after a deleted marker version")
        self.assertFalse({(k, v) for k, v, _ in rest} & set(seen))
        # The first remaining version of the marker key is now its latest.
        same = sorted([x for x in rest if x[0] == nk], key=lambda x: x[1], reverse=False)
        if same:
            self.assertTrue(any(x[2] for x in same), f"no latest version left for {nk}: {same}")
        self.r.Bucket(b).object_versions.page_size(3).delete()
        self.assert_empty(b)

    def test_multipart_uploads_aborted_page_by_page(self):
        b = unique_bucket("pbu")
        self.c.create_bucket(Bucket=b)
        for i in range(7):
            for _ in range(2):
                self.c.create_multipart_upload(Bucket=b, Key=f"u{i % 3}/k{i}")
        for delimiter in ("/", None):
            kw = {"Bucket": b, "PaginationConfig": {"PageSize": 2}}
            if delimiter:
                kw["Delimiter"] = delimiter
            prefixes = []
            for p in self.c.get_paginator("list_multipart_uploads").paginate(**kw):
                prefixes += [cp["Prefix"] for cp in p.get("CommonPrefixes", [])]
                for u in p.get("Uploads", []):
                    self.c.abort_multipart_upload(Bucket=b, Key=u["Key"], UploadId=u["UploadId"])
            if delimiter:
                self.assertEqual(prefixes, ["u0/", "u1/", "u2/"], "each common prefix once")
        for p in self.c.get_paginator("list_multipart_uploads").paginate(Bucket=b, PaginationConfig={"PageSize": 2}):
            for u in p.get("Uploads", []):
                self.c.abort_multipart_upload(Bucket=b, Key=u["Key"], UploadId=u["UploadId"])
        self.assertEqual(self.c.list_multipart_uploads(Bucket=b).get("Uploads", []), [])
        self.c.delete_bucket(Bucket=b)

    def test_list_parts_pages(self):
        b = unique_bucket("pbp")
        self.c.create_bucket(Bucket=b)
        up = self.c.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
        for n in (1, 2, 4, 7, 9):
            self.c.upload_part(Bucket=b, Key="k", UploadId=up, PartNumber=n, Body=b"p")
        # A part number marker that never was a part is a position.
        r = self.c.list_parts(Bucket=b, Key="k", UploadId=up, PartNumberMarker=3, MaxParts=2)
        self.assertEqual([p["PartNumber"] for p in r["Parts"]], [4, 7])
        self.assertTrue(r["IsTruncated"])
        r = self.c.list_parts(Bucket=b, Key="k", UploadId=up, PartNumberMarker=r["NextPartNumberMarker"], MaxParts=2)
        self.assertEqual([p["PartNumber"] for p in r["Parts"]], [9])
        self.assertFalse(r["IsTruncated"])
        self.c.abort_multipart_upload(Bucket=b, Key="k", UploadId=up)
        self.c.delete_bucket(Bucket=b)


if __name__ == "__main__":
    main()

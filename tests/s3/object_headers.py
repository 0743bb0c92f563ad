"""Object headers as AWS gives them: a 304 Not Modified carries ETag and Last-Modified (and the
version id)."""

from common import *


class ObjectHeaders(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("oh")
        cls.c.create_bucket(Bucket=cls.b)

    def test_not_modified_carries_etag_and_last_modified(self):
        self.c.put_object(Bucket=self.b, Key="k", Body=b"hello")
        h = self.c.head_object(Bucket=self.b, Key="k")
        etag, lm = h["ETag"], h["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
        future = "Fri, 01 Jan 2100 00:00:00 GMT"
        for method in ("GET", "HEAD"):
            for cond in ({"If-None-Match": etag}, {"If-None-Match": "*"}, {"If-Modified-Since": future}):
                with self.subTest(method=method, cond=cond):
                    r = raw_request(method, self.b, "k", headers=cond)
                    self.assertEqual(r.status, 304, r)
                    self.assertEqual(r.headers.get("etag"), etag)
                    self.assertEqual(r.headers.get("last-modified"), lm)
                    self.assertNotIn("x-amz-version-id", r.headers)  # the null version has none
        # boto3 sees the same headers on its 304 error.
        e = assert_s3_error(lambda: self.c.get_object(Bucket=self.b, Key="k", IfNoneMatch=etag), "304", 304)
        self.assertEqual(e.response["ResponseMetadata"]["HTTPHeaders"].get("etag"), etag)
        self.assertEqual(e.response["ResponseMetadata"]["HTTPHeaders"].get("last-modified"), lm)

    def test_not_modified_of_a_version(self):
        b = unique_bucket("ohv")
        self.c.create_bucket(Bucket=b)
        self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        v = self.c.put_object(Bucket=b, Key="k", Body=b"one")
        r = raw_request("GET", b, "k", headers={"If-None-Match": v["ETag"]})
        self.assertEqual((r.status, r.headers.get("etag"), r.headers.get("x-amz-version-id")),
                         (304, v["ETag"], v["VersionId"]))
        empty_bucket(self.c, b)


if __name__ == "__main__":
    main()

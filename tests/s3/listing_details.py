"""Listing details as AWS gives them: `encoding-type=url` echoed and applied to exactly the
fields AWS encodes (so boto3 decodes them back), an empty `delimiter=` is no delimiter,
`max-keys=0` is an empty page that is not truncated, and ListBuckets' max-buckets,
continuation-token and prefix."""

from urllib.parse import unquote_plus

from common import *

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def xml(resp):
    assert resp.status == 200, resp
    return ET.fromstring(resp.body)


def one(root, name):
    e = root.find(NS + name)
    return None if e is None else (e.text or "")


class ListingDetails(unittest.TestCase):
    KEYS = ["a b/c d.txt", "a b/ü+1", "a b/ü+2", "plain/x", "top&amp", "zz/日本"]

    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("ld")
        cls.c.create_bucket(Bucket=cls.b)
        cls.c.put_bucket_versioning(Bucket=cls.b, VersioningConfiguration={"Status": "Enabled"})
        for k in cls.KEYS:
            cls.c.put_object(Bucket=cls.b, Key=k, Body=b"x")
        for k in cls.KEYS[:3]:
            cls.c.create_multipart_upload(Bucket=cls.b, Key=k)

    def assert_encoded(self, value, plain):
        self.assertTrue(value.isascii() and " " not in value and "/" not in value.replace("%2F", ""), value)
        self.assertEqual(unquote_plus(value), plain)

    def test_v2_raw_encoded_fields(self):
        q = "list-type=2&encoding-type=url&delimiter=%2F&prefix=a%20b%2F&start-after=a%20b%2Fc&max-keys=1"
        r = xml(raw_request("GET", self.b, query=q))
        self.assertEqual(one(r, "EncodingType"), "url")
        self.assert_encoded(one(r, "Prefix"), "a b/")
        self.assert_encoded(one(r, "Delimiter"), "/")
        self.assert_encoded(one(r, "StartAfter"), "a b/c")
        keys = [e.text for e in r.iter(NS + "Key")]
        self.assertEqual(len(keys), 1)
        self.assert_encoded(keys[0], "a b/c d.txt")
        token = one(r, "NextContinuationToken")
        self.assertTrue(token)
        # The token is ours, opaque and unencoded: sent back as it came, it resumes.
        r = xml(raw_request("GET", self.b, query=f"list-type=2&encoding-type=url&prefix=a%20b%2F&continuation-token={quote(token, safe='')}"))
        self.assertEqual(one(r, "ContinuationToken"), token)
        self.assertEqual([unquote_plus(e.text) for e in r.iter(NS + "Key")], ["a b/ü+1", "a b/ü+2"])

    def test_v1_and_versions_raw_encoded_fields(self):
        r = xml(raw_request("GET", self.b, query="encoding-type=url&delimiter=%2F&marker=a%20a&max-keys=1"))
        self.assert_encoded(one(r, "Marker"), "a a")
        self.assert_encoded(one(r, "NextMarker"), "a b/")
        self.assertEqual([unquote_plus(p.text) for p in r.iter(NS + "Prefix") if p.text], ["a b/"])
        r = xml(raw_request("GET", self.b, query="versions&encoding-type=url&key-marker=a%20b%2Fc%20d.txt&max-keys=1"))
        self.assertEqual(one(r, "EncodingType"), "url")
        self.assert_encoded(one(r, "KeyMarker"), "a b/c d.txt")
        self.assert_encoded(one(r, "NextKeyMarker"), "a b/ü+1")
        vid = one(r, "NextVersionIdMarker")
        self.assertRegex(vid, "^[0-9a-f]{24}$")  # version ids are never encoded
        r = xml(raw_request("GET", self.b, query="uploads&encoding-type=url&delimiter=%2F"))
        self.assertEqual(one(r, "EncodingType"), "url")
        self.assertEqual([unquote_plus(p.text) for p in r.iter(NS + "Prefix") if p.text], ["a b/"])

    def test_boto3_decodes_every_field(self):
        # boto3 asks for url encoding on its own and decodes the fields AWS encodes.
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/", Prefix="a b/", StartAfter="a b/c")
        self.assertEqual((r["Delimiter"], r["Prefix"], r["StartAfter"]), ("/", "a b/", "a b/c"))
        self.assertEqual([o["Key"] for o in r["Contents"]], ["a b/c d.txt", "a b/ü+1", "a b/ü+2"])
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/")
        self.assertEqual(r["Delimiter"], "/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], ["a b/", "plain/", "zz/"])
        r = self.c.list_objects(Bucket=self.b, Delimiter="/", Marker="a a", MaxKeys=1)
        self.assertEqual((r["Delimiter"], r["Marker"], r["NextMarker"]), ("/", "a a", "a b/"))
        r = self.c.list_object_versions(Bucket=self.b, Delimiter="/", Prefix="a b/", KeyMarker="a b/c d.txt", MaxKeys=1)
        self.assertEqual((r["Delimiter"], r["Prefix"], r["KeyMarker"], r["NextKeyMarker"]),
                         ("/", "a b/", "a b/c d.txt", "a b/ü+1"))
        self.assertEqual([v["Key"] for v in r["Versions"]], ["a b/ü+1"])
        # Paging through everything with boto3 round-trips every marker.
        got = [o["Key"] for p in self.c.get_paginator("list_objects").paginate(Bucket=self.b, PaginationConfig={"PageSize": 1})
               for o in p.get("Contents", [])]
        self.assertEqual(got, sorted(self.KEYS))
        got = [v["Key"] for p in self.c.get_paginator("list_object_versions").paginate(Bucket=self.b, PaginationConfig={"PageSize": 1})
               for v in p.get("Versions", [])]
        self.assertEqual(got, sorted(self.KEYS))

    def test_empty_delimiter_is_no_delimiter(self):
        for q in ("list-type=2&delimiter=", "delimiter=", "versions&delimiter=", "uploads&delimiter="):
            with self.subTest(q=q):
                r = xml(raw_request("GET", self.b, query=q))
                self.assertIsNone(r.find(NS + "Delimiter"), "an empty delimiter is not echoed")
                self.assertEqual(r.findall(NS + "CommonPrefixes"), [])
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="")
        self.assertEqual(r["KeyCount"], len(self.KEYS))

    def test_max_keys_zero(self):
        for q, count in (("list-type=2&max-keys=0", "KeyCount"), ("max-keys=0", None), ("versions&max-keys=0", None)):
            with self.subTest(q=q):
                r = xml(raw_request("GET", self.b, query=q))
                self.assertEqual(one(r, "IsTruncated"), "false")
                self.assertEqual(r.findall(NS + "Contents") + r.findall(NS + "Version"), [])
                self.assertIsNone(r.find(NS + "NextContinuationToken"))
                self.assertIsNone(r.find(NS + "NextMarker"))
                if count:
                    self.assertEqual(one(r, count), "0")
        r = self.c.list_objects_v2(Bucket=self.b, MaxKeys=0)
        self.assertFalse(r["IsTruncated"])

    def test_list_buckets_pages_and_prefix(self):
        stem = unique_bucket("lb")
        names = [f"{stem}-{i}" for i in range(5)]
        for n in names:
            self.c.create_bucket(Bucket=n)
        r = self.c.list_buckets(Prefix=stem)
        self.assertEqual([b["Name"] for b in r["Buckets"]], names)
        self.assertEqual(r.get("Prefix"), stem)
        self.assertNotIn("ContinuationToken", r)
        got, token, pages = [], None, 0
        while True:
            kw = {"Prefix": stem, "MaxBuckets": 2}
            if token:
                kw["ContinuationToken"] = token
            r = self.c.list_buckets(**kw)
            pages += 1
            self.assertLessEqual(len(r["Buckets"]), 2)
            got += [b["Name"] for b in r["Buckets"]]
            token = r.get("ContinuationToken")
            if not token:
                break
            if pages == 1:
                self.c.delete_bucket(Bucket=got[-1])  # a token is a position: its bucket may go
        self.assertEqual(got, names)
        self.assertEqual(pages, 3)
        assert_s3_error(lambda: self.c.list_buckets(MaxBuckets=10001), "InvalidArgument", 400)
        for n in names[2:]:
            self.c.delete_bucket(Bucket=n)
        self.c.delete_bucket(Bucket=names[0])


if __name__ == "__main__":
    main()

"""Listing: 10,000 keys put concurrently, ListObjectsV2 pagination, delimiters and common
prefixes, StartAfter, ContinuationToken, EncodingType=url, FetchOwner, ListObjects (v1) with
Marker/NextMarker, and list-after-write."""

import os
import unittest
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote_plus

from common import assert_s3_error, client, main, unique_bucket

N = int(os.environ.get("S3_LISTING_KEYS", "10000"))


def key_of(i):
    return f"d{i % 10}/sub{i % 7}/k{i:05}"


class Listing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("list")
        cls.c.create_bucket(Bucket=cls.b)
        cls.keys = sorted(key_of(i) for i in range(N))

        def put(i):
            cls.c.put_object(Bucket=cls.b, Key=key_of(i), Body=str(i).encode())

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(N)))

    def list_all_v2(self, **kw):
        pages, token = [], None
        while True:
            args = dict(kw)
            if token:
                args["ContinuationToken"] = token
            r = self.c.list_objects_v2(Bucket=self.b, **args)
            pages.append(r)
            if not r["IsTruncated"]:
                return pages
            token = r["NextContinuationToken"]
            self.assertTrue(token)
            self.assertLess(len(pages), 100_000)

    def test_pagination_1000_per_page(self):
        pages = self.list_all_v2(MaxKeys=1000)
        self.assertEqual(len(pages), N // 1000 if N % 1000 == 0 else N // 1000 + 1)
        got = []
        for i, p in enumerate(pages):
            self.assertEqual(p["KeyCount"], len(p.get("Contents", [])))
            self.assertEqual(p["MaxKeys"], 1000)
            if i < len(pages) - 1:
                self.assertEqual(p["KeyCount"], 1000)
                self.assertTrue(p["IsTruncated"])
            if i > 0:
                self.assertEqual(p["ContinuationToken"], pages[i - 1]["NextContinuationToken"])
            got += [o["Key"] for o in p.get("Contents", [])]
        self.assertFalse(pages[-1]["IsTruncated"])
        self.assertNotIn("NextContinuationToken", pages[-1])
        self.assertEqual(got, self.keys)
        o = pages[0]["Contents"][0]
        self.assertEqual(o["Size"], len(str(int(o["Key"][-5:]))))
        self.assertTrue(o["ETag"].startswith('"'))
        self.assertIn("LastModified", o)
        self.assertNotIn("Owner", o, "ListObjectsV2 shows Owner only with FetchOwner")

    def test_default_max_keys_is_1000(self):
        r = self.c.list_objects_v2(Bucket=self.b)
        self.assertEqual(r["KeyCount"], min(1000, N))
        self.assertEqual(r["IsTruncated"], N > 1000)

    def test_paginator_small_pages(self):
        got = []
        for p in self.c.get_paginator("list_objects_v2").paginate(Bucket=self.b, Prefix="d3/sub4/",
                                                                   PaginationConfig={"PageSize": 17}):
            self.assertLessEqual(p["KeyCount"], 17)
            got += [o["Key"] for o in p.get("Contents", [])]
        self.assertEqual(got, [k for k in self.keys if k.startswith("d3/sub4/")])

    def test_delimiter_common_prefixes(self):
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], [f"d{i}/" for i in range(10)])
        self.assertNotIn("Contents", r)
        self.assertEqual(r["KeyCount"], 10)
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/", Prefix="d3/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], [f"d3/sub{j}/" for j in range(7)])
        self.assertEqual(r["Prefix"], "d3/")
        self.assertEqual(r["Delimiter"], "/")
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/", Prefix="d3/sub2/")
        self.assertNotIn("CommonPrefixes", r)
        self.assertEqual([o["Key"] for o in r["Contents"]], [k for k in self.keys if k.startswith("d3/sub2/")])
        # prefix that is not on a delimiter boundary
        r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/", Prefix="d3/sub")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], [f"d3/sub{j}/" for j in range(7)])

    def test_delimiter_pagination(self):
        prefixes, token, pages = [], None, 0
        while True:
            kw = {"ContinuationToken": token} if token else {}
            r = self.c.list_objects_v2(Bucket=self.b, Delimiter="/", Prefix="d5/", MaxKeys=3, **kw)
            pages += 1
            self.assertLessEqual(r["KeyCount"], 3)
            prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            if not r["IsTruncated"]:
                break
            token = r["NextContinuationToken"]
        self.assertEqual(prefixes, [f"d5/sub{j}/" for j in range(7)])
        self.assertEqual(pages, 3)

    def test_start_after(self):
        after = "d5/sub3/k"
        r = self.c.list_objects_v2(Bucket=self.b, StartAfter=after, MaxKeys=50)
        self.assertEqual([o["Key"] for o in r["Contents"]], [k for k in self.keys if k > after][:50])
        self.assertEqual(r["StartAfter"], after)
        exact = self.keys[1234]
        r = self.c.list_objects_v2(Bucket=self.b, StartAfter=exact, MaxKeys=5)
        self.assertEqual([o["Key"] for o in r["Contents"]], self.keys[1235:1240])
        r = self.c.list_objects_v2(Bucket=self.b, StartAfter="zzz")
        self.assertEqual(r["KeyCount"], 0)
        self.assertFalse(r["IsTruncated"])

    def test_continuation_token_resumes_exactly(self):
        r1 = self.c.list_objects_v2(Bucket=self.b, Prefix="d7/", MaxKeys=100)
        r2 = self.c.list_objects_v2(Bucket=self.b, Prefix="d7/", MaxKeys=100,
                                    ContinuationToken=r1["NextContinuationToken"])
        want = [k for k in self.keys if k.startswith("d7/")]
        self.assertEqual([o["Key"] for o in r1["Contents"] + r2["Contents"]], want[:200])
        assert_s3_error(lambda: self.c.list_objects_v2(Bucket=self.b, ContinuationToken="not-a-token!!"),
                        "InvalidArgument", 400)

    def test_fetch_owner(self):
        r = self.c.list_objects_v2(Bucket=self.b, MaxKeys=3, FetchOwner=True)
        for o in r["Contents"]:
            self.assertTrue(o["Owner"].get("ID"), o)

    def test_list_objects_v1_marker(self):
        got, marker, pages = [], None, 0
        while True:
            kw = {"Marker": marker} if marker else {}
            r = self.c.list_objects(Bucket=self.b, MaxKeys=1000, **kw)
            pages += 1
            keys = [o["Key"] for o in r.get("Contents", [])]
            got += keys
            if not r["IsTruncated"]:
                break
            marker = r.get("NextMarker") or keys[-1]
        self.assertEqual(got, self.keys)
        self.assertEqual(pages, max(1, -(-N // 1000)))
        r = self.c.list_objects(Bucket=self.b, MaxKeys=1)
        self.assertIn("Owner", r["Contents"][0], "ListObjects (v1) shows the Owner")

    def test_list_objects_v1_delimiter_next_marker(self):
        prefixes, marker = [], None
        for _ in range(10):
            kw = {"Marker": marker} if marker else {}
            r = self.c.list_objects(Bucket=self.b, Delimiter="/", Prefix="d1/", MaxKeys=3, **kw)
            prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            if not r["IsTruncated"]:
                break
            self.assertIn("NextMarker", r, "a truncated v1 listing with a delimiter carries NextMarker")
            marker = r["NextMarker"]
        self.assertEqual(prefixes, [f"d1/sub{j}/" for j in range(7)])

    def test_encoding_type_url(self):
        b = unique_bucket("enc")
        self.c.create_bucket(Bucket=b)
        keys = ["a b/c d.txt", "ü/ñ é.txt", "plus+sign", "pct%41", "amp&lt", "tab-less/日本"]
        for k in keys:
            self.c.put_object(Bucket=b, Key=k, Body=b"x")
        # Explicit EncodingType: boto3 returns the keys as sent (encoded).
        r = self.c.list_objects_v2(Bucket=b, EncodingType="url")
        self.assertEqual(r.get("EncodingType"), "url")
        raw = [o["Key"] for o in r["Contents"]]
        for k in raw:
            self.assertNotIn(" ", k, f"key not URL-encoded: {k!r}")
            self.assertTrue(k.isascii(), f"key not URL-encoded: {k!r}")
        self.assertEqual(sorted(unquote_plus(k) for k in raw), sorted(keys))
        r = self.c.list_objects_v2(Bucket=b, EncodingType="url", Delimiter="/")
        self.assertEqual(sorted(unquote_plus(p["Prefix"]) for p in r["CommonPrefixes"]),
                         sorted({k.split("/")[0] + "/" for k in keys if "/" in k}))
        # boto3's default: it asks for url encoding itself and decodes.
        self.assertEqual([o["Key"] for o in self.c.list_objects_v2(Bucket=b)["Contents"]], sorted(keys))
        self.assertEqual([o["Key"] for o in self.c.list_objects(Bucket=b)["Contents"]], sorted(keys))

    def test_list_after_write(self):
        b = unique_bucket("law")
        self.c.create_bucket(Bucket=b)
        for i in range(30):
            k = f"law/{i:03}"
            self.c.put_object(Bucket=b, Key=k, Body=b"v" * i)
            r = self.c.list_objects_v2(Bucket=b, Prefix="law/")
            self.assertEqual([o["Key"] for o in r["Contents"]][-1], k)
            self.assertEqual(r["KeyCount"], i + 1)
        for i in range(30):
            self.c.delete_object(Bucket=b, Key=f"law/{i:03}")
            r = self.c.list_objects_v2(Bucket=b, Prefix="law/")
            self.assertEqual(r["KeyCount"], 29 - i)

    def test_max_keys_zero_and_prefix_without_match(self):
        r = self.c.list_objects_v2(Bucket=self.b, MaxKeys=0)
        self.assertEqual(r["KeyCount"], 0)
        r = self.c.list_objects_v2(Bucket=self.b, Prefix="nothing-here/")
        self.assertEqual(r["KeyCount"], 0)
        self.assertNotIn("Contents", r)


if __name__ == "__main__":
    main()

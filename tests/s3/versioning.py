"""Versioning: enabled buckets keep every version; delete markers; reading, heading and
deleting by VersionId; suspended buckets write the `null` version; unversioned buckets."""

import unittest

from common import assert_s3_error, client, main, unique_bucket


class Versioning(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()

    def new_bucket(self, status=None):
        b = unique_bucket("ver")
        self.c.create_bucket(Bucket=b)
        if status:
            self.c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": status})
        return b

    def versions(self, b, key):
        r = self.c.list_object_versions(Bucket=b, Prefix=key)
        vs = [v for v in r.get("Versions", []) if v["Key"] == key]
        dms = [d for d in r.get("DeleteMarkers", []) if d["Key"] == key]
        return vs, dms

    def test_versions_markers_and_restores(self):
        b, c = self.new_bucket("Enabled"), self.c
        bodies = [b"one", b"two-two", b"three-three-three"]
        ids = []
        for body in bodies:
            r = c.put_object(Bucket=b, Key="k", Body=body)
            self.assertTrue(r.get("VersionId"), r)
            self.assertNotEqual(r["VersionId"], "null")
            ids.append(r["VersionId"])
        self.assertEqual(len(set(ids)), 3, ids)

        vs, dms = self.versions(b, "k")
        self.assertEqual([v["VersionId"] for v in vs], ids[::-1], "newest first")
        self.assertEqual([v["IsLatest"] for v in vs], [True, False, False])
        self.assertEqual([v["Size"] for v in vs], [len(x) for x in bodies[::-1]])
        self.assertEqual(dms, [])

        g = c.get_object(Bucket=b, Key="k")
        self.assertEqual((g["Body"].read(), g["VersionId"]), (bodies[2], ids[2]))
        for vid, body in zip(ids, bodies):
            g = c.get_object(Bucket=b, Key="k", VersionId=vid)
            self.assertEqual((g["Body"].read(), g["VersionId"]), (body, vid))
            h = c.head_object(Bucket=b, Key="k", VersionId=vid)
            self.assertEqual((h["ContentLength"], h["VersionId"]), (len(body), vid))

        # delete without a version: a delete marker
        d = c.delete_object(Bucket=b, Key="k")
        self.assertTrue(d.get("DeleteMarker"), d)
        marker = d["VersionId"]
        self.assertNotIn(marker, ids)
        assert_s3_error(lambda: c.get_object(Bucket=b, Key="k"), "NoSuchKey", 404)
        assert_s3_error(lambda: c.head_object(Bucket=b, Key="k"), "404", 404)
        self.assertEqual(c.list_objects_v2(Bucket=b)["KeyCount"], 0)
        vs, dms = self.versions(b, "k")
        self.assertEqual([d["VersionId"] for d in dms], [marker])
        self.assertTrue(dms[0]["IsLatest"])
        self.assertEqual([v["IsLatest"] for v in vs], [False, False, False])
        # old versions still read by id
        self.assertEqual(c.get_object(Bucket=b, Key="k", VersionId=ids[0])["Body"].read(), bodies[0])
        # reading the marker by id is not allowed (405)
        assert_s3_error(lambda: c.get_object(Bucket=b, Key="k", VersionId=marker), "MethodNotAllowed", 405)

        # deleting the marker by id restores the object
        d = c.delete_object(Bucket=b, Key="k", VersionId=marker)
        self.assertTrue(d.get("DeleteMarker"), d)
        self.assertEqual(d.get("VersionId"), marker)
        self.assertEqual(c.get_object(Bucket=b, Key="k")["Body"].read(), bodies[2])
        vs, dms = self.versions(b, "k")
        self.assertEqual(dms, [])
        self.assertEqual([v["IsLatest"] for v in vs], [True, False, False])

        # deleting a specific (older) version removes just it
        d = c.delete_object(Bucket=b, Key="k", VersionId=ids[1])
        self.assertEqual(d.get("VersionId"), ids[1])
        assert_s3_error(lambda: c.get_object(Bucket=b, Key="k", VersionId=ids[1]), "NoSuchVersion", 404)
        vs, _ = self.versions(b, "k")
        self.assertEqual([v["VersionId"] for v in vs], [ids[2], ids[0]])
        # deleting the latest version by id makes the previous one current
        c.delete_object(Bucket=b, Key="k", VersionId=ids[2])
        self.assertEqual(c.get_object(Bucket=b, Key="k")["Body"].read(), bodies[0])
        vs, _ = self.versions(b, "k")
        self.assertEqual([(v["VersionId"], v["IsLatest"]) for v in vs], [(ids[0], True)])

    def test_reads_of_a_delete_marker_say_so(self):
        b, c = self.new_bucket("Enabled"), self.c
        c.put_object(Bucket=b, Key="k", Body=b"x")
        marker = c.delete_object(Bucket=b, Key="k")["VersionId"]
        e = assert_s3_error(lambda: c.get_object(Bucket=b, Key="k"), "NoSuchKey", 404)
        headers = e.response["ResponseMetadata"]["HTTPHeaders"]
        self.assertEqual(headers.get("x-amz-delete-marker"), "true", headers)
        self.assertEqual(headers.get("x-amz-version-id"), marker, headers)
        e = assert_s3_error(lambda: c.get_object(Bucket=b, Key="k", VersionId=marker), "MethodNotAllowed", 405)
        self.assertEqual(e.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker"), "true")

    def test_delete_objects_with_version_ids(self):
        b, c = self.new_bucket("Enabled"), self.c
        v1 = c.put_object(Bucket=b, Key="x", Body=b"1")["VersionId"]
        v2 = c.put_object(Bucket=b, Key="x", Body=b"2")["VersionId"]
        r = c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "x", "VersionId": v2}]})
        self.assertEqual([(d["Key"], d.get("VersionId")) for d in r["Deleted"]], [("x", v2)])
        self.assertEqual(c.get_object(Bucket=b, Key="x")["Body"].read(), b"1")
        r = c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "x"}]})
        self.assertTrue(r["Deleted"][0].get("DeleteMarker"), r)
        self.assertTrue(r["Deleted"][0].get("DeleteMarkerVersionId"), r)
        assert_s3_error(lambda: c.get_object(Bucket=b, Key="x"), "NoSuchKey", 404)
        self.assertEqual(c.get_object(Bucket=b, Key="x", VersionId=v1)["Body"].read(), b"1")

    def test_versions_listing_pagination(self):
        b, c = self.new_bucket("Enabled"), self.c
        want = []
        for k in ["a", "b", "c"]:
            ids = [c.put_object(Bucket=b, Key=k, Body=k.encode() * i)["VersionId"] for i in range(1, 4)]
            want += [(k, v) for v in ids[::-1]]
        got, km, vm = [], None, None
        for _ in range(20):
            kw = {"KeyMarker": km, "VersionIdMarker": vm} if km else {}
            r = c.list_object_versions(Bucket=b, MaxKeys=2, **kw)
            got += [(v["Key"], v["VersionId"]) for v in r.get("Versions", [])]
            if not r["IsTruncated"]:
                break
            km, vm = r["NextKeyMarker"], r["NextVersionIdMarker"]
        self.assertEqual(got, want)

    def test_suspended_writes_the_null_version(self):
        b, c = self.new_bucket("Enabled"), self.c
        v1 = c.put_object(Bucket=b, Key="s", Body=b"versioned")["VersionId"]
        c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
        r = c.put_object(Bucket=b, Key="s", Body=b"null-1")
        self.assertEqual(r.get("VersionId"), "null")
        r = c.put_object(Bucket=b, Key="s", Body=b"null-2")
        self.assertEqual(r.get("VersionId"), "null")
        vs, _ = self.versions(b, "s")
        self.assertEqual([(v["VersionId"], v["IsLatest"]) for v in vs], [("null", True), (v1, False)])
        self.assertEqual(c.get_object(Bucket=b, Key="s")["Body"].read(), b"null-2")
        self.assertEqual(c.get_object(Bucket=b, Key="s", VersionId="null")["Body"].read(), b"null-2")
        self.assertEqual(c.get_object(Bucket=b, Key="s", VersionId=v1)["Body"].read(), b"versioned")
        # a delete while suspended puts a null delete marker in place of the null version
        d = c.delete_object(Bucket=b, Key="s")
        self.assertTrue(d.get("DeleteMarker"), d)
        self.assertEqual(d.get("VersionId"), "null")
        vs, dms = self.versions(b, "s")
        self.assertEqual([v["VersionId"] for v in vs], [v1])
        self.assertEqual([m["VersionId"] for m in dms], ["null"])

    def test_unversioned_bucket(self):
        b, c = self.new_bucket(), self.c
        r = c.put_object(Bucket=b, Key="u", Body=b"1")
        self.assertIn(r.get("VersionId"), (None, "null"))
        c.put_object(Bucket=b, Key="u", Body=b"2")
        vs, dms = self.versions(b, "u")
        self.assertEqual([(v["VersionId"], v["IsLatest"]) for v in vs], [("null", True)])
        self.assertEqual(dms, [])
        d = c.delete_object(Bucket=b, Key="u")
        self.assertFalse(d.get("DeleteMarker", False))
        vs, dms = self.versions(b, "u")
        self.assertEqual((vs, dms), ([], []))

    def test_small_versions_keep_their_bytes_as_they_stop_being_current(self):
        # small objects live inline in the metadata; the current version's bytes are kept once
        b, c = self.new_bucket(), self.c
        c.put_object(Bucket=b, Key="n", Body=b"before versioning")
        c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        self.assertEqual(c.get_object(Bucket=b, Key="n", VersionId="null")["Body"].read(), b"before versioning")
        v1 = c.put_object(Bucket=b, Key="n", Body=b"first version")["VersionId"]
        self.assertEqual(c.get_object(Bucket=b, Key="n", VersionId="null")["Body"].read(), b"before versioning")
        self.assertEqual(c.get_object(Bucket=b, Key="n", VersionId=v1)["Body"].read(), b"first version")
        marker = c.delete_object(Bucket=b, Key="n")["VersionId"]
        self.assertEqual(c.get_object(Bucket=b, Key="n", VersionId=v1)["Body"].read(), b"first version")
        c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
        c.put_object(Bucket=b, Key="n", Body=b"suspended null")  # replaces the old null version
        self.assertEqual(c.get_object(Bucket=b, Key="n", VersionId="null")["Body"].read(), b"suspended null")
        c.delete_object(Bucket=b, Key="n", VersionId="null")
        c.delete_object(Bucket=b, Key="n", VersionId=marker)
        # v1 is current again, read by key and by id, and copied
        self.assertEqual(c.get_object(Bucket=b, Key="n")["Body"].read(), b"first version")
        self.assertEqual(c.head_object(Bucket=b, Key="n", VersionId=v1)["ContentLength"], len(b"first version"))
        c.copy_object(Bucket=b, Key="n2", CopySource={"Bucket": b, "Key": "n", "VersionId": v1})
        self.assertEqual(c.get_object(Bucket=b, Key="n2")["Body"].read(), b"first version")
        vs, dms = self.versions(b, "n")
        self.assertEqual([(v["VersionId"], v["Size"]) for v in vs], [(v1, 13)])
        self.assertEqual(dms, [])

    def test_copy_from_a_version(self):
        b, c = self.new_bucket("Enabled"), self.c
        v1 = c.put_object(Bucket=b, Key="src", Body=b"old")["VersionId"]
        c.put_object(Bucket=b, Key="src", Body=b"new")
        r = c.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src", "VersionId": v1})
        self.assertEqual(r.get("CopySourceVersionId"), v1)
        self.assertTrue(r.get("VersionId"))
        self.assertEqual(c.get_object(Bucket=b, Key="dst")["Body"].read(), b"old")


if __name__ == "__main__":
    main()

"""Object headers as AWS gives them: a 304 Not Modified carries ETag and Last-Modified (and the
version id), and `aws-chunked` — how a body was sent — is never stored as the object's
Content-Encoding."""

import gzip

from common import *


class ObjectHeaders(BucketCase):
    PREFIX = "oh"

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

    def put_chunked(self, key, data, encoding):
        path = raw_path(self.b, key)
        host = f"{HOST}:{PORT}"
        body = unsigned_trailer_chunks(data, 64 * 1024, "x-amz-checksum-crc32", crc32_b64(data))
        headers = {
            "Content-Encoding": encoding,
            "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32",
            "Content-Length": str(len(body)),
        }
        hdrs, _, _ = sign_headers("PUT", host, path, "", headers, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        r = send_raw("PUT", path, "", hdrs, body, host=host)
        self.assertEqual(r.status, 200, r)

    def test_aws_chunked_is_not_stored_as_content_encoding(self):
        data = gzip.compress(os.urandom(100 * 1024))
        self.put_chunked("gz", data, "gzip, aws-chunked")
        self.put_chunked("gz2", data, "aws-chunked,gzip")
        self.put_chunked("plain", data, "aws-chunked")
        for key, want in (("gz", "gzip"), ("gz2", "gzip"), ("plain", None)):
            with self.subTest(key=key):
                got = self.c.get_object(Bucket=self.b, Key=key)
                self.assertEqual(got.get("ContentEncoding"), want)
                self.assertEqual(got["Body"].read(), data)
                self.assertEqual(self.c.head_object(Bucket=self.b, Key=key).get("ContentEncoding"), want)
        # Nor through a multipart upload or a copy that names it.
        up = self.c.create_multipart_upload(Bucket=self.b, Key="mp", ContentEncoding="gzip, aws-chunked")["UploadId"]
        e = self.c.upload_part(Bucket=self.b, Key="mp", UploadId=up, PartNumber=1, Body=data)["ETag"]
        self.c.complete_multipart_upload(Bucket=self.b, Key="mp", UploadId=up,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
        self.assertEqual(self.c.head_object(Bucket=self.b, Key="mp").get("ContentEncoding"), "gzip")
        self.c.copy_object(Bucket=self.b, Key="cp", CopySource={"Bucket": self.b, "Key": "gz"},
                           MetadataDirective="REPLACE", ContentEncoding="aws-chunked")
        self.assertIsNone(self.c.head_object(Bucket=self.b, Key="cp").get("ContentEncoding"))


if __name__ == "__main__":
    main()

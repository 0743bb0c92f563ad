"""Authentication errors as AWS gives them: missing or empty Authorization, clock skew, SigV4
dated by the Date header, presigned X-Amz-Expires bounds and expiry."""

import datetime
import unittest.mock
import urllib.error
import urllib.request

from common import *


def at(when):
    """botocore signs as if it were `when` (UTC)."""
    return unittest.mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None))


def now():
    return datetime.datetime.now(datetime.timezone.utc)


class AuthErrors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.bucket = unique_bucket("ae")
        cls.c.create_bucket(Bucket=cls.bucket)
        cls.c.put_object(Bucket=cls.bucket, Key="seed", Body=b"seed")

    def test_no_or_empty_authorization_is_access_denied(self):
        for headers in ({}, {"Authorization": ""}, {"Authorization": " "}):
            with self.subTest(headers=headers):
                r = raw_request("GET", self.bucket, "seed", headers=headers, sign=False)
                assert_raw_error(r, "AccessDenied", 403)
                r = raw_request("PUT", self.bucket, "new", headers=headers, body=b"x", sign=False)
                assert_raw_error(r, "AccessDenied", 403)
        self.assertEqual(error_code(lambda: self.c.head_object(Bucket=self.bucket, Key="new")), "404")

    def test_request_time_too_skewed(self):
        for minutes in (-20, 20):
            with self.subTest(minutes=minutes), at(now() + datetime.timedelta(minutes=minutes)):
                r = raw_request("GET", self.bucket, "seed")
                assert_raw_error(r, "RequestTimeTooSkewed", 403)
        # Within 15 minutes is fine.
        with at(now() - datetime.timedelta(minutes=5)):
            self.assertEqual(raw_request("GET", self.bucket, "seed").status, 200)

    def test_sigv4_dated_by_the_date_header(self):
        # With a Date header botocore signs it and sends no X-Amz-Date.
        hdrs, _, _ = sign_headers("PUT", f"{HOST}:{PORT}", raw_path(self.bucket, "dated"), headers={"Date": "x"},
                                  body=b"dated")
        self.assertNotIn("X-Amz-Date", hdrs)
        self.assertIn("date", hdrs["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";"))
        r = send_raw("PUT", raw_path(self.bucket, "dated"), headers=hdrs, body=b"dated")
        self.assertEqual(r.status, 200, r)
        r = raw_request("GET", self.bucket, "dated", headers={"Date": "x"})
        self.assertEqual((r.status, r.body), (200, b"dated"))
        # Still a signed date: a skewed Date is refused, a tampered signature too.
        with at(now() - datetime.timedelta(minutes=20)):
            assert_raw_error(raw_request("GET", self.bucket, "dated", headers={"Date": "x"}), "RequestTimeTooSkewed", 403)
        hdrs, _, sig = sign_headers("GET", f"{HOST}:{PORT}", raw_path(self.bucket, "dated"), headers={"Date": "x"})
        hdrs["Authorization"] = hdrs["Authorization"].replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
        assert_raw_error(send_raw("GET", raw_path(self.bucket, "dated"), headers=hdrs), "SignatureDoesNotMatch", 403)

    def presigned_query(self, expires, when=None):
        def make():
            return self.c.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": "seed"}, ExpiresIn=expires
            ).split("?", 1)[1]
        if when is None:
            return make()
        with at(when):
            return make()

    def test_presigned_expires_bounds(self):
        path = raw_path(self.bucket, "seed")
        for expires in (0, 604801, 10**9):
            with self.subTest(expires=expires):
                r = send_raw("GET", path, self.presigned_query(expires))
                assert_raw_error(r, "AuthorizationQueryParametersError", 400)
        for expires in (1, 604800):
            with self.subTest(expires=expires):
                r = send_raw("GET", path, self.presigned_query(expires))
                self.assertEqual((r.status, r.body), (200, b"seed"))

    def test_expired_presigned_url(self):
        q = self.presigned_query(3600, when=now() - datetime.timedelta(hours=2))
        r = send_raw("GET", raw_path(self.bucket, "seed"), q)
        assert_raw_error(r, "AccessDenied", 403)
        _, msg, _ = parse_error_xml(r.body)
        self.assertEqual(msg, "Request has expired")


if __name__ == "__main__":
    main()

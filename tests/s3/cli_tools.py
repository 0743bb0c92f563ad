"""Round trips with real tools: the aws CLI (`python -m awscli`) and rclone, over a directory
with a few small files and a 30 MiB one (multipart in both tools)."""

import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from common import ACCESS, ENDPOINT, MiB, REGION, SECRET, client, main, unique_bucket


def make_tree(root):
    files = {
        "a.txt": b"hello from the aws cli\n",
        "sub/b.bin": os.urandom(100 * 1024),
        "sub/deeper/c.json": b'{"k": 1}\n',
        "with space.txt": b"spaces in names\n",
        "big.bin": os.urandom(30 * MiB),
    }
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return files


def same_tree(a, b):
    cmp = filecmp.dircmp(a, b)

    def walk(c):
        if c.left_only or c.right_only or c.diff_files or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        return not mismatch and not errors and all(walk(s) for s in c.subdirs.values())

    return walk(cmp)


class Tools(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cairn-s3-cli-")
        cls.src = os.path.join(cls.tmp, "src")
        cls.files = make_tree(cls.src)
        cls.env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION,
                       AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                       AWS_PAGER="")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_tool(self, argv, env=None):
        out = subprocess.run(argv, capture_output=True, text=True, env=env or self.env, timeout=300)
        if out.returncode != 0:
            self.fail(f"{' '.join(argv)} exited {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}")
        return out.stdout

    def aws(self, *args):
        return self.run_tool([sys.executable, "-m", "awscli", "--endpoint-url", ENDPOINT, *args])

    def test_aws_cli_round_trip(self):
        b = unique_bucket("awscli")
        self.aws("s3", "mb", f"s3://{b}")
        self.assertIn(b, self.aws("s3", "ls"))
        self.aws("s3", "cp", os.path.join(self.src, "a.txt"), f"s3://{b}/single/a.txt")
        self.assertIn("a.txt", self.aws("s3", "ls", f"s3://{b}/single/"))
        self.aws("s3", "sync", self.src, f"s3://{b}/tree/")
        listing = self.aws("s3", "ls", "--recursive", f"s3://{b}/tree/")
        for rel in self.files:
            self.assertIn(f"tree/{rel}", listing)
        head = self.aws("s3api", "head-object", "--bucket", b, "--key", "tree/big.bin")
        self.assertIn(f'"ContentLength": {30 * MiB}', head)
        self.assertRegex(head, r'"ETag": "\\"[0-9a-f]{32}-\d+\\""', "30 MiB goes multipart in the aws CLI")
        # a second sync uploads nothing
        self.assertEqual(self.aws("s3", "sync", self.src, f"s3://{b}/tree/").strip(), "")
        out = os.path.join(self.tmp, "aws-out")
        self.aws("s3", "cp", f"s3://{b}/tree/big.bin", os.path.join(out, "one-big.bin"))
        with open(os.path.join(out, "one-big.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(self.files["big.bin"]).hexdigest())
        back = os.path.join(self.tmp, "aws-back")
        self.aws("s3", "sync", f"s3://{b}/tree/", back)
        self.assertTrue(same_tree(self.src, back), "aws s3 sync down differs from what went up")
        self.aws("s3", "rm", "--recursive", f"s3://{b}/")
        self.assertEqual(client().list_objects_v2(Bucket=b)["KeyCount"], 0)
        self.aws("s3", "rb", f"s3://{b}")
        self.assertNotIn(b, self.aws("s3", "ls"))

    def rclone(self, *args):
        env = dict(self.env, RCLONE_CONFIG_C_TYPE="s3", RCLONE_CONFIG_C_PROVIDER="Other",
                   RCLONE_CONFIG_C_ENDPOINT=ENDPOINT, RCLONE_CONFIG_C_ACCESS_KEY_ID=ACCESS,
                   RCLONE_CONFIG_C_SECRET_ACCESS_KEY=SECRET, RCLONE_CONFIG_C_REGION=REGION,
                   RCLONE_CONFIG_C_FORCE_PATH_STYLE="true")
        # rclone's AWS SDK refuses to start with AWS_CA_BUNDLE set on its plain-HTTP transport,
        # and the endpoint is plain HTTP anyway.
        env.pop("AWS_CA_BUNDLE", None)
        exe = shutil.which("rclone")
        self.assertIsNotNone(exe, "rclone is not installed (scripts/s3-tools.sh installs it)")
        return self.run_tool([exe, "--config", "/dev/null", "--retries", "1", "--low-level-retries", "1",
                              "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", *args], env=env)

    def test_rclone_round_trip(self):
        b = unique_bucket("rclone")
        self.rclone("mkdir", f"c:{b}")
        self.rclone("copy", self.src, f"c:{b}/r")
        self.rclone("check", self.src, f"c:{b}/r")
        listed = sorted(self.rclone("lsf", "-R", "--files-only", f"c:{b}/r").split("\n"))
        self.assertEqual([x for x in listed if x], sorted(self.files))
        sizes = self.rclone("lsl", f"c:{b}/r/big.bin")
        self.assertIn(str(30 * MiB), sizes)
        back = os.path.join(self.tmp, "rclone-back")
        self.rclone("copy", f"c:{b}/r", back)
        self.assertTrue(same_tree(self.src, back), "rclone copy down differs from what went up")
        self.rclone("delete", f"c:{b}/r")
        self.assertEqual(self.rclone("lsf", "-R", f"c:{b}").strip(), "")
        self.rclone("rmdir", f"c:{b}")
        self.assertNotIn(b, [x["Name"] for x in client().list_buckets()["Buckets"]])


if __name__ == "__main__":
    main()

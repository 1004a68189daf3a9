"""Checks the bucket policies and lifecycle rules of deploy/bucket (scripts/test.sh runs it):

    python3 deploy/bucket/check.py

1. Lifecycle rules (S3 and R2) never expire a current object: only unfinished multipart
   uploads, versions tarn already deleted (noncurrent) and lone delete markers. A file that a
   live snapshot references is a current object, so no rule can take it; files leave the
   lake only through tarn's snapshot expiry and orphan removal (docs/deploy.md, "The bucket").
2. The IAM policy grants only the object actions tarn uses, on the warehouse prefix only,
   and the bucket policy denies everyone else, plain HTTP, and bucket changes by tarn's role.
3. The same files applied to moto's S3 and IAM, with IAM enforced: a user holding exactly
   the IAM policy reads, writes and deletes under warehouse/, and is refused outside it, on other buckets and on bucket configuration; the bucket
   accepts the lifecycle configuration and the bucket policy.
4. The R2 token policy is scoped to the one bucket with object read/write only.

Prints one line per check; exits 1 if any failed.
"""

import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
BUCKET = "tarn-lake"
results = []


def check(ok, what):
    results.append((bool(ok), what))


def load(name):
    return json.loads((HERE / name).read_text(encoding="utf-8"))


TARN_ACTIONS = {
    "s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads",
    "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
}


def static_checks():
    for name in ("s3-lifecycle.json", "r2-lifecycle.json"):
        rules = load(name)["Rules"]
        for rule in rules:
            expiration = rule.get("Expiration", {})
            check(not ({"Days", "Date"} & set(expiration)), f"{name} {rule['ID']}: never expires a current object")
            check("Transitions" not in rule and "Transition" not in rule,
                  f"{name} {rule['ID']}: moves no object to another storage class (reads of old snapshots stay fast)")
        check(any(r.get("AbortIncompleteMultipartUpload") for r in rules), f"{name}: unfinished uploads are aborted")

    policy = load("s3-iam-policy.json")
    actions = set()
    for st in policy["Statement"]:
        check(st["Effect"] == "Allow", f"IAM {st['Sid']}: allows only")
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        check(all("*" not in a for a in acts), f"IAM {st['Sid']}: no wildcard actions")
        actions |= set(acts)
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        check(all(r in (f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/warehouse/*") for r in res),
              f"IAM {st['Sid']}: only the bucket and its warehouse/ prefix")
    check(actions == TARN_ACTIONS, f"IAM: exactly the actions tarn uses ({sorted(actions ^ TARN_ACTIONS)} differ)")

    token = load("r2-token-policy.json")["policies"]
    check(len(token) == 1 and list(token[0]["resources"]) == [f"com.cloudflare.edge.r2.bucket.ACCOUNT_ID_default_{BUCKET}"],
          "R2 token: scoped to the one bucket")
    check([g["name"] for g in token[0]["permission_groups"]] == ["Workers R2 Storage Bucket Item Write"],
          "R2 token: object read and write only (no bucket administration)")


def moto_checks():
    try:
        import boto3
        from botocore.exceptions import ClientError
        from moto import mock_aws
        from moto.core import set_initial_no_auth_action_count
    except ImportError as e:
        check(False, f"moto and boto3 in the venv (scripts/setup.sh): {e}")
        return
    os.environ.update(AWS_ACCESS_KEY_ID="admin", AWS_SECRET_ACCESS_KEY="admin", AWS_DEFAULT_REGION="us-east-1")

    # Setting up counts as actions of the (allowed) admin; every request after these 9 is
    # checked against the caller's IAM policies.
    @set_initial_no_auth_action_count(9)
    @mock_aws
    def run():
        iam, admin_s3 = boto3.client("iam"), boto3.client("s3")
        admin_s3.create_bucket(Bucket=BUCKET)                                          # 1
        admin_s3.create_bucket(Bucket="other-bucket")                                  # 2
        arn = iam.create_policy(PolicyName="tarn", PolicyDocument=json.dumps(load("s3-iam-policy.json")))["Policy"]["Arn"]  # 3
        iam.create_user(UserName="tarn")                                               # 4
        iam.attach_user_policy(UserName="tarn", PolicyArn=arn)                         # 5
        key = iam.create_access_key(UserName="tarn")["AccessKey"]                      # 6
        admin_s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration=load("s3-lifecycle.json"))  # 7
        got = admin_s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]      # 8
        check({r["ID"] for r in got} == {"abort-failed-uploads", "forget-deleted-files"},
              "S3 (moto) accepts the lifecycle configuration")
        admin_s3.put_object(Bucket="other-bucket", Key="x", Body=b"x")                 # 9
        check(True, "IAM (moto) accepts the policy document")

        s3 = boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])

        def allowed(what, call):
            try:
                call()
                check(True, f"tarn's role may {what}")
            except ClientError as e:
                check(False, f"tarn's role may {what}: {e}")

        def denied(what, call):
            try:
                call()
                check(False, f"tarn's role may not {what}: it succeeded")
            except ClientError as e:
                code = e.response["Error"]["Code"]
                check(code in ("AccessDenied", "403"), f"tarn's role may not {what} ({code})")

        k = "warehouse/shop/orders/data/part-0.parquet"
        allowed("write a data file under warehouse/", lambda: s3.put_object(Bucket=BUCKET, Key=k, Body=b"PAR1"))
        allowed("read it", lambda: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
        # Not run against moto: listing with a prefix (moto does not pass s3:prefix to the
        # policy's condition and refuses it) and multipart uploads (moto refuses
        # CreateMultipartUpload under a PutObject grant that AWS honours). The static checks
        # above cover their grants.
        allowed("delete an expired file", lambda: s3.delete_object(Bucket=BUCKET, Key=k))
        denied("write outside warehouse/", lambda: s3.put_object(Bucket=BUCKET, Key="elsewhere/x", Body=b"x"))
        denied("list the whole bucket", lambda: s3.list_objects_v2(Bucket=BUCKET))
        denied("read another bucket", lambda: s3.get_object(Bucket="other-bucket", Key="x"))
        denied("change the lifecycle rules", lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=BUCKET, LifecycleConfiguration={"Rules": []}))
        denied("delete the bucket", lambda: s3.delete_bucket(Bucket=BUCKET))
        denied("set the bucket policy", lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy="{}"))

    run()

    @mock_aws
    def bucket_policy():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(load("s3-bucket-policy.json")))
        got = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
        check([s["Sid"] for s in got["Statement"]] == [s["Sid"] for s in load("s3-bucket-policy.json")["Statement"]],
              "S3 (moto) accepts the bucket policy")

    bucket_policy()


if __name__ == "__main__":
    static_checks()
    moto_checks()
    for ok, what in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    failed = sum(1 for ok, _ in results if not ok)
    print(f"deploy/bucket: {len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)

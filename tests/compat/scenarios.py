"""The client compatibility scenarios: each client Strata's users run goes through the same
scenarios against a running broker, and the matrix of results is printed (and written as
JSON when --json is given). A scenario a client does not support is "n/a", never a pass.

Run by tests/compat/run.sh, which installs the clients and starts the broker.
"""

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
SCENARIOS = ["codecs", "group", "commits", "admin", "idempotent", "transactions", "security"]
WAIT = 60
# The broker's secured listeners and a SCRAM user (--security, written by run.sh).
SECURITY = None


def secured():
    if SECURITY is None:
        raise NotApplicable("no secured listeners given (--security)")
    return SECURITY


def signed_token(key_file, subject, expires_in=600):
    """An ES256 JWT for `subject`, signed with the PEM key in `key_file` (what an identity
    provider hands out; the broker checks it against run.sh's key set)."""
    import base64
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    s = secured()
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "compat"}).encode())
    claims = b64(json.dumps({"sub": subject, "iss": s["issuer"], "aud": s["audience"],
                             "iat": now, "exp": now + expires_in}).encode())
    r, sig_s = decode_dss_signature(
        key.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{header}.{claims}.{b64(r.to_bytes(32, 'big') + sig_s.to_bytes(32, 'big'))}"


def unique(what):
    return f"compat-{what}-{uuid.uuid4().hex[:8]}"


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def records(n, tag):
    """n keyed records with two headers each: (key, value, headers)."""
    return [
        (f"k{i}".encode(), f"{tag}-{i}".encode(), [("h1", b"one"), ("h2", f"{i}".encode())])
        for i in range(n)
    ]


def same_records(got, sent, what):
    got = sorted(got)
    sent = sorted((k, v, sorted(h)) for k, v, h in sent)
    got = [(k, v, sorted(h)) for k, v, h in got]
    expect(got == sent, f"{what}: got {len(got)} records, {got[:2]}..., want {sent[:2]}...")


# ---------------------------------------------------------------- kafka-python


class KafkaPython:
    name = "kafka-python"

    def __init__(self, bootstrap):
        import kafka

        self.kafka = kafka
        self.bootstrap = bootstrap
        self.version = kafka.__version__

    def admin(self):
        return self.kafka.KafkaAdminClient(bootstrap_servers=self.bootstrap)

    def create(self, topic, partitions=1, configs=None):
        from kafka.admin import NewTopic

        a = self.admin()
        try:
            a.create_topics(
                [NewTopic(topic, partitions, 1, topic_configs=configs or {})],
                timeout_ms=WAIT * 1000,
            )
        finally:
            a.close()

    def consume(self, topic, n, **config):
        c = self.kafka.KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=WAIT * 1000,
            **config,
        )
        out = []
        try:
            for m in c:
                out.append((m.key, m.value, list(m.headers)))
                if len(out) >= n:
                    break
        finally:
            c.close()
        return out

    def codecs(self):
        for codec in CODECS:
            topic = unique(f"codec-{codec}")
            self.create(topic)
            p = self.kafka.KafkaProducer(
                bootstrap_servers=self.bootstrap,
                compression_type=None if codec == "none" else codec,
                acks="all",
            )
            sent = records(20, codec)
            for k, v, h in sent:
                p.send(topic, key=k, value=v, headers=h)
            p.flush(WAIT)
            p.close()
            same_records(self.consume(topic, len(sent)), sent, codec)

    def group(self):
        topic = unique("group")
        group = unique("g")
        self.create(topic, 4)
        p = self.kafka.KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for i in range(200):
            p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        p.flush(WAIT)
        # Each member polls on its own thread, as applications do (one thread polling both
        # in turn can block in one member's join while the other must rejoin).
        seen = set()
        lock = threading.Lock()
        held = [0, 0]
        stop = [threading.Event(), threading.Event()]

        def member(i):
            c = self.kafka.KafkaConsumer(
                topic,
                bootstrap_servers=self.bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=10000,
                heartbeat_interval_ms=500,
            )
            try:
                while not stop[i].is_set():
                    for batch in c.poll(timeout_ms=200).values():
                        with lock:
                            seen.update(r.value for r in batch)
                    held[i] = len(c.assignment())
                    if held[i]:
                        try:
                            c.commit()
                        except self.kafka.errors.CommitFailedError:
                            # Refused while the group rebalances, as Kafka refuses it.
                            pass
            finally:
                c.close()
                held[i] = 0

        threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + WAIT
        try:
            while time.time() < deadline and not (all(held) and sum(held) == 4):
                time.sleep(0.1)
            expect(all(held) and sum(held) == 4, f"the members hold {held} of 4 partitions")
            # One leaves: the other takes every partition and reads the rest.
            stop[0].set()
            threads[0].join()
            while time.time() < deadline and (held[1] != 4 or len(seen) < 200):
                time.sleep(0.1)
            expect(held[1] == 4, f"the member left holds {held[1]} partitions")
            expect(len(seen) == 200, f"{len(seen)} of 200 records consumed")
        finally:
            for s in stop:
                s.set()
            for t in threads:
                t.join()

    def commits(self):
        topic = unique("commits")
        group = unique("g")
        self.create(topic)
        p = self.kafka.KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for i in range(10):
            p.send(topic, value=f"v{i}".encode())
        p.flush(WAIT)
        tp = self.kafka.TopicPartition(topic, 0)
        c = self.kafka.KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
        )
        c.assign([tp])
        c.seek(tp, 0)
        from kafka.structs import OffsetAndMetadata

        c.commit({tp: OffsetAndMetadata(6, "six", -1)})
        committed = c.committed(tp)
        c.close()
        expect(committed == 6, f"committed {committed}, want 6")
        again = self.kafka.KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            consumer_timeout_ms=WAIT * 1000,
        )
        first = next(iter(again))
        again.close()
        expect(first.offset == 6, f"a new member starts at {first.offset}, want 6")

    def admin_scenario(self):
        from kafka.admin import ConfigResource, ConfigResourceType

        topic = unique("admin")
        self.create(topic, 3, {"retention.ms": "3600000"})
        a = self.admin()
        try:
            described = a.describe_topics([topic])
            expect(len(described[0]["partitions"]) == 3, f"described {described}")
            a.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "7200000"})]
            )
            got = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            text = repr(got)
            expect("7200000" in text, f"retention.ms not altered: {text[:300]}")
            a.delete_topics([topic], timeout_ms=WAIT * 1000)
            deadline = time.time() + WAIT
            while topic in a.list_topics() and time.time() < deadline:
                time.sleep(0.2)
            expect(topic not in a.list_topics(), "the topic is gone")
        finally:
            a.close()

    def idempotent(self):
        topic = unique("idempotent")
        self.create(topic, 2)
        p = self.kafka.KafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"
        )
        for i in range(1000):
            p.send(topic, value=f"v{i}".encode())
        p.flush(WAIT)
        p.close()
        got = self.consume(topic, 1000)
        expect(len({v for _, v, _ in got}) == 1000, f"{len(got)} records")

    def transactions(self):
        topic = unique("txn")
        self.create(topic)
        p = self.kafka.KafkaProducer(
            bootstrap_servers=self.bootstrap, transactional_id=unique("tx")
        )
        p.init_transactions()
        p.begin_transaction()
        for i in range(3):
            p.send(topic, value=f"committed-{i}".encode())
        p.commit_transaction()
        p.begin_transaction()
        for i in range(3):
            p.send(topic, value=f"aborted-{i}".encode())
        p.abort_transaction()
        p.begin_transaction()
        p.send(topic, value=b"committed-last")
        p.commit_transaction()
        p.close()
        got = [v for _, v, _ in self.consume(topic, 4, isolation_level="read_committed")]
        expect(
            sorted(got) == sorted([b"committed-0", b"committed-1", b"committed-2", b"committed-last"]),
            f"read_committed saw {got}",
        )


    def security(self):
        s = secured()
        topic = unique("secure")
        self.create(topic)
        scram = dict(
            bootstrap_servers=s["sasl_ssl"], security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=s["user"],
            sasl_plain_password=s["password"], ssl_cafile=s["ca"],
        )
        plain = dict(scram, sasl_mechanism="PLAIN")
        mtls = dict(
            bootstrap_servers=s["mtls"], security_protocol="SSL", ssl_cafile=s["ca"],
            ssl_certfile=s["client_cert"], ssl_keyfile=s["client_key"],
        )
        sent = []
        for name, config in (("scram", scram), ("plain", plain), ("mtls", mtls)):
            p = self.kafka.KafkaProducer(acks="all", **config)
            batch = records(5, name)
            for k, v, h in batch:
                p.send(topic, key=k, value=v, headers=h)
            p.flush(WAIT)
            p.close()
            sent += batch
        c = self.kafka.KafkaConsumer(
            topic, auto_offset_reset="earliest", enable_auto_commit=False,
            consumer_timeout_ms=WAIT * 1000, **scram,
        )
        got = []
        try:
            for m in c:
                got.append((m.key, m.value, list(m.headers)))
                if len(got) >= len(sent):
                    break
        finally:
            c.close()
        same_records(got, sent, "over SASL_SSL and mTLS")
        # OAUTHBEARER: a token from the trusted key authenticates; one signed by another
        # key, or expired, is refused.
        try:
            from kafka.net.sasl.oauth import AbstractTokenProvider
        except ImportError:  # kafka-python before 3.0
            from kafka.sasl.oauth import AbstractTokenProvider

        class Tokens(AbstractTokenProvider):
            def __init__(self, key_file, expires_in=600):
                self.key_file, self.expires_in = key_file, expires_in

            def token(self):
                return signed_token(self.key_file, "compat-oauth", self.expires_in)

        def oauth(tokens):
            return dict(bootstrap_servers=s["oauth"], security_protocol="SASL_PLAINTEXT",
                        sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=tokens)

        p = self.kafka.KafkaProducer(acks="all", **oauth(Tokens(s["token_key"])))
        p.send(topic, value=b"oauth").get(timeout=WAIT)
        p.close()
        for what, config in (
            ("a wrong password", dict(scram, sasl_plain_password="wrong")),
            ("an unknown user", dict(scram, sasl_plain_username="nobody")),
            ("another CA's certificate", dict(mtls, ssl_certfile=s["stranger_cert"],
                                               ssl_keyfile=s["stranger_key"])),
            ("a token signed by an unknown key", oauth(Tokens(s["stranger_token_key"]))),
            ("an expired token", oauth(Tokens(s["token_key"], expires_in=-3600))),
        ):
            try:
                # A refused client retries bootstrapping until its timeout (30 s by default).
                p = self.kafka.KafkaProducer(max_block_ms=5000, bootstrap_timeout_ms=5000,
                                             **config)
                p.send(topic, value=b"x").get(timeout=5)
                p.close()
                accepted = True
            except Exception:
                accepted = False
            expect(not accepted, f"{what} was accepted")


class AioKafka:
    name = "aiokafka"

    def __init__(self, bootstrap):
        import aiokafka

        self.aiokafka = aiokafka
        self.bootstrap = bootstrap
        self.version = aiokafka.__version__

    def run(self, coro):
        return asyncio.run(asyncio.wait_for(coro, WAIT * 2))

    async def create(self, topic, partitions=1, configs=None):
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        a = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await a.start()
        try:
            await a.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
        finally:
            await a.close()

    async def produce(self, topic, sent, **config):
        p = self.aiokafka.AIOKafkaProducer(bootstrap_servers=self.bootstrap, **config)
        await p.start()
        try:
            for k, v, h in sent:
                await p.send(topic, key=k, value=v, headers=h)
            await p.flush()
        finally:
            await p.stop()

    async def consume(self, topic, n, **config):
        c = self.aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **config,
        )
        await c.start()
        out = []
        try:
            deadline = time.time() + WAIT
            while len(out) < n and time.time() < deadline:
                batches = await c.getmany(timeout_ms=500)
                for batch in batches.values():
                    out.extend((m.key, m.value, list(m.headers)) for m in batch)
        finally:
            await c.stop()
        return out

    def codecs(self):
        async def go():
            for codec in CODECS:
                topic = unique(f"codec-{codec}")
                await self.create(topic)
                sent = records(20, codec)
                await self.produce(
                    topic, sent, compression_type=None if codec == "none" else codec, acks="all"
                )
                same_records(await self.consume(topic, len(sent)), sent, codec)

        self.run(go())

    def group(self):
        async def go():
            topic = unique("group")
            group = unique("g")
            await self.create(topic, 4)
            await self.produce(topic, [(None, f"v{i}".encode(), []) for i in range(200)], acks="all")
            members = [
                self.aiokafka.AIOKafkaConsumer(
                    topic,
                    bootstrap_servers=self.bootstrap,
                    group_id=group,
                    auto_offset_reset="earliest",
                    enable_auto_commit=False,
                    session_timeout_ms=10000,
                    heartbeat_interval_ms=500,
                )
                for _ in range(2)
            ]
            for m in members:
                await m.start()
            seen = set()
            deadline = time.time() + WAIT
            while time.time() < deadline and not all(m.assignment() for m in members):
                for m in members:
                    for batch in (await m.getmany(timeout_ms=200)).values():
                        seen.update(r.value for r in batch)
            expect(all(m.assignment() for m in members), "both members have partitions")
            for m in members:
                if m.assignment():
                    await m.commit()
            await members[0].stop()
            stay = members[1]
            while time.time() < deadline and (len(stay.assignment()) < 4 or len(seen) < 200):
                for batch in (await stay.getmany(timeout_ms=200)).values():
                    seen.update(r.value for r in batch)
            await stay.commit()
            expect(len(stay.assignment()) == 4, f"the member left holds {len(stay.assignment())}")
            expect(len(seen) == 200, f"{len(seen)} of 200 records consumed")
            await stay.stop()

        self.run(go())

    def commits(self):
        async def go():
            from aiokafka.structs import OffsetAndMetadata, TopicPartition

            topic = unique("commits")
            group = unique("g")
            await self.create(topic)
            await self.produce(topic, [(None, f"v{i}".encode(), []) for i in range(10)], acks="all")
            tp = TopicPartition(topic, 0)
            c = self.aiokafka.AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
            await c.start()
            c.assign([tp])
            await c.commit({tp: OffsetAndMetadata(6, "six")})
            committed = await c.committed(tp)
            await c.stop()
            expect(committed == 6, f"committed {committed}, want 6")
            again = self.aiokafka.AIOKafkaConsumer(
                topic, bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
            await again.start()
            first = await again.getone()
            await again.stop()
            expect(first.offset == 6, f"a new member starts at {first.offset}, want 6")

        self.run(go())

    def admin_scenario(self):
        async def go():
            from aiokafka.admin import AIOKafkaAdminClient
            from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

            topic = unique("admin")
            await self.create(topic, 3, {"retention.ms": "3600000"})
            a = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await a.start()
            try:
                described = await a.describe_topics([topic])
                expect(len(described[0]["partitions"]) == 3, f"described {described}")
                await a.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "7200000"})]
                )
                got = await a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
                expect("7200000" in repr(got), f"retention.ms not altered: {repr(got)[:300]}")
                await a.delete_topics([topic])
                deadline = time.time() + WAIT
                while topic in await a.list_topics() and time.time() < deadline:
                    await asyncio.sleep(0.2)
                expect(topic not in await a.list_topics(), "the topic is gone")
            finally:
                await a.close()

        self.run(go())

    def idempotent(self):
        async def go():
            topic = unique("idempotent")
            await self.create(topic, 2)
            await self.produce(
                topic, [(None, f"v{i}".encode(), []) for i in range(1000)], enable_idempotence=True
            )
            got = await self.consume(topic, 1000)
            expect(len({v for _, v, _ in got}) == 1000, f"{len(got)} records")

        self.run(go())

    def transactions(self):
        async def go():
            topic = unique("txn")
            await self.create(topic)
            p = self.aiokafka.AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, transactional_id=unique("tx")
            )
            await p.start()
            try:
                async with p.transaction():
                    for i in range(3):
                        await p.send(topic, value=f"committed-{i}".encode())
                await p.begin_transaction()
                for i in range(3):
                    await p.send(topic, value=f"aborted-{i}".encode())
                await p.abort_transaction()
                async with p.transaction():
                    await p.send(topic, value=b"committed-last")
            finally:
                await p.stop()
            got = [v for _, v, _ in await self.consume(topic, 4, isolation_level="read_committed")]
            want = [b"committed-0", b"committed-1", b"committed-2", b"committed-last"]
            expect(sorted(got) == sorted(want), f"read_committed saw {got}")

        self.run(go())

    def security(self):
        from aiokafka.helpers import create_ssl_context

        s = secured()
        scram = dict(
            bootstrap_servers=s["sasl_ssl"], security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=s["user"],
            sasl_plain_password=s["password"], ssl_context=create_ssl_context(cafile=s["ca"]),
        )
        mtls = dict(
            bootstrap_servers=s["mtls"], security_protocol="SSL",
            ssl_context=create_ssl_context(
                cafile=s["ca"], certfile=s["client_cert"], keyfile=s["client_key"]
            ),
        )

        async def go():
            topic = unique("secure")
            await self.create(topic)
            sent = []
            for name, config in (("scram", scram), ("mtls", mtls)):
                p = self.aiokafka.AIOKafkaProducer(acks="all", **config)
                await p.start()
                try:
                    batch = records(5, name)
                    for k, v, h in batch:
                        await p.send(topic, key=k, value=v, headers=h)
                    await p.flush()
                finally:
                    await p.stop()
                sent.extend(batch)
            c = self.aiokafka.AIOKafkaConsumer(
                topic, auto_offset_reset="earliest", enable_auto_commit=False, **mtls
            )
            await c.start()
            got = []
            try:
                deadline = time.time() + WAIT
                while len(got) < len(sent) and time.time() < deadline:
                    for batch in (await c.getmany(timeout_ms=500)).values():
                        got.extend((m.key, m.value, list(m.headers)) for m in batch)
            finally:
                await c.stop()
            same_records(got, sent, "over SASL_SSL and mTLS")
            p = self.aiokafka.AIOKafkaProducer(
                request_timeout_ms=5000, **dict(scram, sasl_plain_password="wrong")
            )
            try:
                await asyncio.wait_for(p.start(), 15)
                accepted = True
            except Exception:
                accepted = False
            finally:
                await p.stop()
            expect(not accepted, "a wrong password was accepted")

        self.run(go())


# ---------------------------------------------------------------- kcat


class Kcat:
    name = "kcat"

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        out = subprocess.run(["kcat", "-V"], capture_output=True, text=True, check=True)
        found = re.search(r"Version (\S+) .*librdkafka (\S+)", out.stdout)
        self.version = f"{found[1]} (librdkafka {found[2]})" if found else "?"
        # Admin goes through kafka-python: kcat has none.
        self.helper = KafkaPython(bootstrap)

    def kcat(self, *args, stdin=None):
        out = subprocess.run(
            ["kcat", "-b", self.bootstrap, *args],
            input=stdin,
            capture_output=True,
            timeout=WAIT,
        )
        expect(out.returncode == 0, f"kcat {' '.join(args)}: {out.stderr.decode()[-400:]}")
        return out.stdout

    def codecs(self):
        for codec in CODECS:
            topic = unique(f"codec-{codec}")
            self.helper.create(topic)
            sent = records(20, codec)
            for k, v, h in sent:
                headers = [x for name, value in h for x in ("-H", f"{name}={value.decode()}")]
                self.kcat("-P", "-t", topic, "-z", codec, "-X", "acks=all", "-k", k.decode(), *headers, stdin=v)
            out = self.kcat(
                "-C", "-t", topic, "-o", "beginning", "-e", "-c", str(len(sent)),
                "-J",
            )
            got = []
            for line in out.decode().splitlines():
                m = json.loads(line)
                headers = m.get("headers") or []
                pairs = [(headers[i], headers[i + 1].encode()) for i in range(0, len(headers), 2)]
                got.append((m["key"].encode(), m["payload"].encode(), pairs))
            same_records(got, sent, codec)

    def group(self):
        topic = unique("group")
        group = unique("g")
        self.helper.create(topic, 4)
        self.kcat("-P", "-t", topic, "-X", "acks=all", stdin="\n".join(f"v{i}" for i in range(200)).encode())
        # Two balanced members; one leaves after its share, the other consumes the rest.
        def member():
            return subprocess.Popen(
                ["kcat", "-b", self.bootstrap, "-G", group, "-o", "beginning", "-e",
                 "-X", "enable.auto.commit=true", "-X", "auto.commit.interval.ms=100",
                 "-f", "%s\n", topic],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        a, b = member(), member()
        try:
            out_a, _ = a.communicate(timeout=WAIT)
            out_b, _ = b.communicate(timeout=WAIT)
        finally:
            a.kill()
            b.kill()
        seen = set(out_a.decode().split()) | set(out_b.decode().split())
        expect(len(seen) == 200, f"{len(seen)} of 200 records consumed by the group")
        committed = self.helper.kafka.KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = committed.list_group_offsets(group)
        finally:
            committed.close()
        total = sum(o.offset for o in offsets[group].values())
        expect(total == 200, f"the group committed {total} of 200")

    def commits(self):
        topic = unique("commits")
        group = unique("g")
        self.helper.create(topic)
        self.kcat("-P", "-t", topic, "-X", "acks=all", stdin="\n".join(f"v{i}" for i in range(10)).encode())
        # A member reads 6 and commits; the next one starts at 6.
        self.kcat("-G", group, "-o", "beginning", "-c", "6", "-X", "enable.auto.commit=true",
                  "-X", "auto.commit.interval.ms=100", "-f", "%o\n", topic)
        out = self.kcat("-G", group, "-c", "1", "-f", "%o\n", topic)
        expect(out.decode().split() == ["6"], f"a new member starts at {out.decode().split()}, want 6")

    def admin_scenario(self):
        raise NotApplicable("kcat has no admin commands")

    def idempotent(self):
        topic = unique("idempotent")
        self.helper.create(topic, 2)
        lines = "\n".join(f"v{i}" for i in range(1000)).encode()
        self.kcat("-P", "-t", topic, "-X", "enable.idempotence=true", stdin=lines)
        out = self.kcat("-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n")
        got = out.decode().split()
        expect(len(got) == 1000 and len(set(got)) == 1000, f"{len(got)} records")

    def transactions(self):
        raise NotApplicable("kcat has no transactions")

    def security(self):
        s = secured()
        topic = unique("secure")
        self.helper.create(topic)
        scram = ["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
                 "-X", f"sasl.username={s['user']}", "-X", f"sasl.password={s['password']}",
                 "-X", f"ssl.ca.location={s['ca']}"]
        mtls = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={s['ca']}",
                "-X", f"ssl.certificate.location={s['client_cert']}",
                "-X", f"ssl.key.location={s['client_key']}"]

        def at(addr, *args, stdin=None):
            return subprocess.run(["kcat", "-b", addr, *args], input=stdin,
                                  capture_output=True, timeout=WAIT)

        for addr, how in ((s["sasl_ssl"], scram), (s["mtls"], mtls)):
            lines = "\n".join(f"{addr}-{i}" for i in range(10)).encode()
            out = at(addr, "-P", "-t", topic, "-X", "acks=all", *how, stdin=lines)
            expect(out.returncode == 0, f"producing at {addr}: {out.stderr.decode()[-400:]}")
        out = at(s["mtls"], "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n", *mtls)
        got = out.stdout.decode().split()
        expect(len(got) == 20 and len(set(got)) == 20, f"consumed {len(got)} of 20: {out.stderr.decode()[-300:]}")
        # Refused, with Kafka's errors; the broker serves on.
        wrong = [x.replace(f"sasl.password={s['password']}", "sasl.password=wrong") for x in scram]
        stranger = [x.replace(s["client_cert"], s["stranger_cert"]).replace(s["client_key"], s["stranger_key"]) for x in mtls]
        for what, addr, how, said in (
            ("a wrong password", s["sasl_ssl"], wrong, "invalid credentials"),
            ("an unknown user", s["sasl_ssl"],
             [x.replace(f"sasl.username={s['user']}", "sasl.username=nobody") for x in scram],
             "invalid credentials"),
            ("another CA's certificate", s["mtls"], stranger, "unknown ca"),
            ("a plaintext client on the TLS port", s["sasl_ssl"], [], "Disconnected"),
        ):
            out = at(addr, "-L", "-m", "5", *how)
            err = out.stderr.decode()
            expect(out.returncode != 0 and said in err, f"{what}: exit {out.returncode}, {err[-300:]}")
        self.kcat("-L")


class NotApplicable(Exception):
    pass


def go_client(name, bootstrap, binary, security):
    """Runs the Go clients' program (tests/compat/go) for `name`: its version and the result
    of each scenario."""
    extra = ["-security", security] if security else []
    out = subprocess.run(
        [binary, "-bootstrap", bootstrap, "-client", name, *extra],
        capture_output=True,
        text=True,
        timeout=WAIT * len(SCENARIOS) * 2,
    )
    results, version = {}, "?"
    for line in out.stdout.splitlines():
        r = json.loads(line)
        version = r["version"]
        result = r["result"]
        if result.startswith("FAIL"):
            print(f"{name} {r['scenario']}: {result}", file=sys.stderr)
            result = "FAIL"
        elif result.startswith("n/a: "):
            result = f"n/a ({result[5:]})"
        results[r["scenario"]] = (result, r["seconds"])
    if out.returncode != 0 or len(results) != len(SCENARIOS):
        print(out.stderr[-2000:], file=sys.stderr)
    return version, results


CLIENTS = {"kafka-python": KafkaPython, "aiokafka": AioKafka, "kcat": Kcat}
GO_CLIENTS = ["sarama", "confluent-kafka-go"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--json")
    ap.add_argument("--go-binary", help="the Go clients' program (tests/compat/go)")
    ap.add_argument("--security", help="the secured listeners and a SCRAM user (JSON)")
    args = ap.parse_args()
    global SECURITY
    if args.security:
        with open(args.security) as f:
            SECURITY = json.load(f)
    matrix = {}
    versions = {}
    for name in args.clients.split(","):
        if name in GO_CLIENTS:
            version, results = go_client(name, args.bootstrap, args.go_binary, args.security)
            versions[name] = version
            for scenario in SCENARIOS:
                result, seconds = results.get(scenario, ("FAIL", 0))
                matrix[(name, scenario)] = result
                print(f"{name:14} {scenario:13} {result} ({seconds:.1f}s)", flush=True)
            continue
        if name == "kcat" and not shutil.which("kcat"):
            print("kcat is not installed", file=sys.stderr)
            sys.exit(2)
        client = CLIENTS[name](args.bootstrap)
        versions[name] = client.version
        for scenario in SCENARIOS:
            run = getattr(client, "admin_scenario" if scenario == "admin" else scenario)
            started = time.time()
            try:
                run()
                result = "pass"
            except NotApplicable as e:
                result = f"n/a ({e})"
            except Exception:
                result = "FAIL"
                traceback.print_exc()
            matrix[(name, scenario)] = result
            print(f"{name:14} {scenario:13} {result} ({time.time() - started:.1f}s)", flush=True)
    print()
    header = "| client | " + " | ".join(SCENARIOS) + " |"
    print(header)
    print("|" + "---|" * (len(SCENARIOS) + 1))
    for name in versions:
        cells = [matrix[(name, s)].split(" ")[0] for s in SCENARIOS]
        print(f"| {name} {versions[name]} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{c}/{s}": r for (c, s), r in matrix.items()} | {"versions": versions}, f, indent=1)
    sys.exit(1 if any(r == "FAIL" for r in matrix.values()) else 0)


if __name__ == "__main__":
    main()

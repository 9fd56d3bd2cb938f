"""Access control through the real gateway over TLS, as an attacker on the port would try it: no token, forged,
expired and wrong-audience tokens, other owners' images, nested owner namespaces, existence probing, forged
clicks, key rotation and retirement of the last key, a large body sent without credentials."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from clients.client import NewImage, VisualSearchClient
from devkit.launcher import GatewayProcess
from devkit.tokens import keygen, mint, retire
from protos.visual_search.v1 import visual_search_pb2 as pb
from tests.fixtures.gateway import start_secured_gateway
from tests.photos import small_jpeg


@dataclass
class Secured:
    gateway: GatewayProcess
    keys: Path

    def token(self, sub: str, roles: list[str], owners: list[str] = (), kid: str = "k1", **kw: object) -> str:
        return mint((self.keys / f"{kid}.pem").read_bytes(), kid, sub, roles, owners, **kw)

    def client(self, token: str | None) -> VisualSearchClient:
        return self.gateway.client(timeout_s=30, token=token)


@pytest.fixture(scope="module")
def secured(triton_server, tmp_path_factory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("auth")
    gateway = start_secured_gateway(triton_server, root, metrics_client_ca_file=str(root / "tls.pem"))
    s = Secured(gateway, root)
    with s.client(s.token("alice-svc", ["write", "search"], ["alice"])) as alice, \
            s.client(s.token("bob-svc", ["write", "search"], ["bob"])) as bob:
        for who, client in (("alice", alice), ("bob", bob)):
            client.add_images([NewImage(f"{who}/public", small_jpeg("skimage/coffee" if who == "alice" else
                                                                    "skimage/chelsea", 240), who),
                               NewImage(f"{who}/private", small_jpeg("skimage/rocket" if who == "alice" else
                                                                     "skimage/astronaut", 240), who, private=True),
                               NewImage(f"{who}/deleted", small_jpeg("desert", 240), who)])
            client.delete([f"{who}/deleted"])
    yield s
    gateway.stop()


def _code(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code().name, error.value.details()


def test_no_forged_expired_or_misdirected_token_gets_in(secured):
    query = pb.SearchRequest(image_id="alice/public", k=3)
    forged = mint((secured.keys / "attacker.pem").read_bytes(), "k1", "mallory", ["admin"])  # claims kid k1
    unknown_kid = mint((secured.keys / "attacker.pem").read_bytes(), "attacker", "mallory", ["admin"])
    expired = secured.token("alice-svc", ["search"], ttl_s=60, now=time.time() - 3600)
    wrong_audience = secured.token("alice-svc", ["search"], audience="some-other-service")
    unsigned = jwt.encode({"sub": "mallory", "roles": ["admin"], "exp": int(time.time()) + 600,
                           "aud": "visual-search"}, None, algorithm="none", headers={"kid": "k1"})
    cases = {None: "no credentials", forged: "token rejected", unknown_kid: "not a configured key",
             expired: "expired", wrong_audience: "token rejected", unsigned: "token rejected"}
    for token, words in cases.items():
        if token is None:  # TLS without a token
            with secured.client(None) as client:
                code, details = _code(lambda c=client: c.stub.Search(query, timeout=10))
        else:
            with secured.client(token) as client:
                code, details = _code(lambda c=client: c.stub.Search(query, timeout=10))
        assert code == "UNAUTHENTICATED" and words in details, (words, details)
    with grpc.insecure_channel(secured.gateway.target) as plaintext:  # TLS is not optional
        code, _ = _code(lambda: plaintext.unary_unary("/visual_search.v1.VisualSearch/Search")(b"", timeout=5))
    assert code in ("UNAVAILABLE", "INTERNAL")


def test_roles_are_enforced(secured):
    with secured.client(secured.token("reader", ["search"])) as reader:
        assert reader.similar("alice/public", k=3) is not None
        code, details = _code(lambda: reader.add_images([NewImage("reader/x", small_jpeg("the-mouse", 200))]))
        assert code == "PERMISSION_DENIED" and "'write' role" in details
        assert _code(lambda: reader.switch_model("2"))[0] == "PERMISSION_DENIED"
        stats = reader.stats()
        assert stats.private_count == 0 and stats.deleted_count == 0 and stats.image_count == stats.public_count
    with secured.client(secured.token("root", ["admin"])) as admin:
        stats = admin.stats()
        assert stats.private_count >= 2 and stats.deleted_count >= 2
    with secured.client(secured.token("writer", ["write"], ["alice"])) as writer:
        assert _code(lambda: writer.similar("alice/public"))[0] == "PERMISSION_DENIED"  # write is not search


def test_another_owners_images_cannot_be_changed_and_private_ones_stay_hidden(secured):
    with secured.client(secured.token("alice-svc", ["write", "search"], ["alice"])) as alice:
        made_public = alice.set_visibility(["bob/private"], private=False)
        deleted = alice.delete(["bob/public"])
        added = alice.add_images([NewImage("bob/new", small_jpeg("the-mouse", 200), "bob"),
                                  NewImage("alice/sneaky", small_jpeg("the-mouse", 200), "bob")]).results
        results = {r.image_id for r in alice.search(small_jpeg("skimage/astronaut", 240), k=50).results}
    assert made_public.updated_count == 0 and made_public.not_found_ids == ["bob/private"]
    assert deleted.deleted_count == 0 and deleted.not_found_ids == ["bob/public"]
    assert [r.status for r in added] == [pb.AddImageResult.REJECTED] * 2
    assert {r.error_code for r in added} == {"PERMISSION_DENIED"}
    assert "bob/private" not in results and "bob/public" in results
    with secured.client(secured.token("bob-svc", ["write", "search"], ["bob"])) as bob:
        assert bob.set_visibility(["bob/private"], private=True).not_found_ids == []  # still bob's, still there


def test_owner_namespaces_cannot_nest(secured):
    """Owner IDs never contain '/': owner `alice` may write `alice/bob/...`, and no owner `alice/bob` can exist whose
    IDs those would be (its answers would tell alice which of them exist, and alice could squat them)."""
    with secured.client(secured.token("root", ["admin"])) as admin:
        nested = admin.add_images([NewImage("alice/bob/x", small_jpeg("the-mouse", 200), "alice/bob")]).results[0]
    assert nested.status == pb.AddImageResult.REJECTED and nested.error_code == "INVALID_ARGUMENT"
    assert "owner_id" in nested.error_message and "'/'" in nested.error_message
    with pytest.raises(ValueError, match="'/'"):  # the token tool refuses to name such an owner
        secured.token("bob-svc", ["write"], ["alice/bob"])
    claims = {"sub": "bob-svc", "roles": ["write"], "owners": ["alice/bob"], "exp": int(time.time()) + 600,
              "aud": "visual-search"}
    signed = jwt.encode(claims, serialization.load_pem_private_key((secured.keys / "k1.pem").read_bytes(), None),
                        algorithm="EdDSA", headers={"kid": "k1"})  # a validly signed token naming one anyway
    with secured.client(signed) as client:
        code, details = _code(lambda: client.add_images([NewImage("alice/bob/y", small_jpeg("the-mouse", 200),
                                                                  "alice/bob")]))
    assert code == "UNAUTHENTICATED" and "owner ID that cannot exist" in details


def test_responses_do_not_reveal_whether_another_owners_id_exists(secured):
    probes = {"private": "bob/private", "deleted": "bob/deleted", "public": "bob/public", "never": "bob/never"}
    seen = {}
    with secured.client(secured.token("alice-svc", ["write", "search"], ["alice"])) as alice:
        for kind, image_id in probes.items():
            hide = alice.set_visibility([image_id], private=True)
            delete = alice.delete([image_id])
            add = alice.add_images([NewImage(image_id, small_jpeg("the-mouse", 200), "alice")]).results[0]
            search = _code(lambda i=image_id: alice.similar(i)) if kind != "public" else None
            seen[kind] = (hide.updated_count, list(hide.not_found_ids) == [image_id], delete.deleted_count,
                          list(delete.not_found_ids) == [image_id], add.status, add.error_code,
                          add.error_message.replace(image_id, "ID"), search and search[0],
                          search and search[1].replace(image_id, "ID"))
    assert seen["private"] == seen["deleted"] == seen["never"], seen
    assert seen["public"][:7] == seen["never"][:7]


def test_only_results_the_gateway_returned_to_this_caller_can_be_clicked(secured):
    with secured.client(secured.token("alice-svc", ["write", "search"], ["alice"])) as alice, \
            secured.client(secured.token("bob-svc", ["write", "search"], ["bob"])) as bob:
        answer = alice.similar("alice/public", k=3)
        shown = answer.results[0]

        def click(request_id: str, position: int, image_id: str) -> pb.Interaction:
            return pb.Interaction(request_id=request_id, position=position, image_id=image_id,
                                  kind=pb.Interaction.CLICK)
        forged = [click("0" * 32, 0, shown.image_id), click(answer.request_id, 0, "alice/private"),
                  click(answer.request_id, 7, shown.image_id)]
        assert alice.log_interactions(forged).accepted_count == 0
        assert bob.log_interactions([click(answer.request_id, 0, shown.image_id)]).accepted_count == 0
        genuine = click(answer.request_id, shown.position, shown.image_id)
        assert alice.log_interactions([genuine] * 1000).accepted_count == 1  # no CTR poisoning by repetition


def test_a_rotated_in_key_is_accepted_and_a_retired_one_is_refused(secured):
    jwks = secured.keys / "jwks.json"
    keygen("k2", secured.keys / "k2.pem", jwks)
    deadline = time.monotonic() + 15  # the gateway re-reads the key file within seconds
    while True:
        try:
            with secured.client(secured.token("svc", ["search"], kid="k2")) as client:
                client.similar("alice/public", k=1)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    retire("k2", jwks)
    deadline = time.monotonic() + 15
    while True:
        with secured.client(secured.token("svc", ["search"], kid="k2")) as client:
            try:
                client.similar("alice/public", k=1)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
        assert time.monotonic() < deadline, "a retired key still verifies tokens"
        time.sleep(0.5)


def test_retiring_the_last_key_refuses_every_token(secured):
    """An empty key set means every key was retired: no token verifies (fail closed), until a key is added back."""
    jwks = secured.keys / "jwks.json"
    kept = jwks.read_text()
    token = secured.token("svc", ["search"])
    retire("k1", jwks)
    try:
        deadline = time.monotonic() + 15  # the gateway re-reads the key file within seconds
        while True:
            with secured.client(token) as client:
                try:
                    client.similar("alice/public", k=1)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "not a configured key" in (exc.details() or "")
                    break
            assert time.monotonic() < deadline, "tokens still verify after every key was retired"
            time.sleep(0.5)
    finally:
        jwks.write_text(kept)
    deadline = time.monotonic() + 15
    while True:
        with secured.client(token) as client:
            try:
                client.similar("alice/public", k=1)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the restored key is not used again"
                time.sleep(0.5)


def _peak_rss_mib(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) // 1024


def test_a_caller_without_credentials_is_refused_before_its_body_is_read(triton_server, tmp_path):
    """Authentication reads the call's metadata only: a 60 MiB malformed body from an unauthenticated caller gets
    UNAUTHENTICATED (not INVALID_ARGUMENT: it is never parsed) and is never received whole (the gateway's peak
    memory stays where it was; receiving the body would add 60 MiB per call)."""
    gateway = start_secured_gateway(triton_server, tmp_path, metrics_port=0)
    try:
        before = _peak_rss_mib(gateway.pid)
        body = b"\xff" * (60 * 2**20)  # not a protobuf message
        with gateway.client(timeout_s=15) as client:
            for method in ("Search", "SearchBatch", "AddImages"):
                call = (client.channel.stream_unary if method == "AddImages" else client.channel.unary_unary)(
                    f"/visual_search.v1.VisualSearch/{method}")
                request = iter([body]) if method == "AddImages" else body
                code, details = _code(lambda c=call, r=request: c(r, timeout=15))
                assert code == "UNAUTHENTICATED" and "no credentials" in details, (method, code, details)
        assert _peak_rss_mib(gateway.pid) - before < 30, "the gateway received an unauthenticated body"
        assert gateway.health() == 1  # SERVING
    finally:
        gateway.stop()

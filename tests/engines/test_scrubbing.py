"""The one scrubber every artefact, event and error text goes through: what it masks, what it keeps."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from chainette import EngineConfigError, register_engine
from chainette.engines import server_state, servers
from chainette.engines.secrets import looks_secret, remember_secrets, scrub, scrub_argv, scrub_text

KEY = "s3cr3tkey-7f1c"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bob:hunter2@api.example.com/v1", "https://bob:***@api.example.com/v1"),
        (
            "https://ghp_abcdef@github.com/x.git",
            "https://***@github.com/x.git",
        ),  # a lone user part is a token
        ("https://h/v1?api-version=2024-02&api-key=abc", "https://h/v1?api-version=2024-02&api-key=***"),
        ("https://h/b?sv=1&sig=abc%2Fdef&se=2", "https://h/b?sv=1&sig=***&se=2"),  # an Azure SAS URL
        (
            "https://h/x?X-Amz-Credential=a&X-Amz-Signature=b",
            "https://h/x?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        (
            "https://h/x?access_token=a&token=b&key=c&max_tokens=9",
            "https://h/x?access_token=***&token=***&key=***&max_tokens=9",
        ),
        (
            "HTTP 500 from http://u:p@h:8/v1: injected fault",
            "HTTP 500 from http://u:***@h:8/v1: injected fault",
        ),
        ("sent Authorization: Bearer sk-abcdef123", "sent Authorization: Bearer ***"),
        ("no URL, no secret: key points, token counts", "no URL, no secret: key points, token counts"),
    ],
)
def test_scrub_text_masks_credentials_in_urls_and_headers(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


# made-up credentials of real shapes: an Azure Functions key (base64), an OpenAI key, a JWT, a hex key
AZURE_CODE = "aZ3kQ9vR2mXp7LwT0bNc5YhJ8dFs1GqE4uVo6iKy-Ab3Cd=="
SK_KEY = "sk-proj-Xy7Qm2LpR9tV4kZs8NwB"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
HEX_KEY = "3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Azure Functions' key parameter, by name, whatever the value looks like
        ("https://fn.azurewebsites.net/api/qa?code=abc123", "https://fn.azurewebsites.net/api/qa?code=***"),
        (
            f"https://fn.azurewebsites.net/api/qa?code={AZURE_CODE}&page=2",
            "https://fn.azurewebsites.net/api/qa?code=***&page=2",
        ),
        # values of a secret shape, whatever the parameter is called
        (f"https://h/v1?x={SK_KEY}&page=2", "https://h/v1?x=***&page=2"),
        (f"https://h/v1?jwt_value={JWT}", "https://h/v1?jwt_value=***"),
        (f"https://h/v1?q={HEX_KEY}", "https://h/v1?q=***"),
        (f"https://h/v1?id=1&s={AZURE_CODE}", "https://h/v1?id=1&s=***"),
    ],
)
def test_query_values_of_a_secret_name_or_shape_are_masked(url: str, expected: str) -> None:
    assert scrub_text(f"HTTP 401 from {url}") == f"HTTP 401 from {expected}"


@pytest.mark.parametrize(
    "url",
    [
        "https://h/openai/deployments/gpt-4o/chat?api-version=2024-02-01",
        "https://h/v1/items?page=2&per_page=50&sort=created_at&order=desc",
        "https://h/v1?model=gpt-4o-mini-2024-07-18&stream=true",
        "https://h/v1?model=TheBloke/Llama-2-7B-Chat-GGUF&revision=main",
        "https://h/v1?deployment=MyDeployment2024Prod&q=hello%20world",
        "https://h/v1?status_code=404&since=2024-02-01T10:00:00Z",
    ],
)
def test_ordinary_query_values_stay_readable(url: str) -> None:
    assert scrub_text(url) == url


def test_a_secret_shaped_query_value_is_remembered_and_masked_in_free_text() -> None:
    remember_secrets({"base_url": f"https://fn.azurewebsites.net/api/qa?code={AZURE_CODE}"})
    assert scrub_text(f"server said: key {AZURE_CODE} is revoked") == "server said: key *** is revoked"


def test_code_is_secret_only_as_a_query_parameter() -> None:
    assert scrub({"status_code": 404, "code": "E42"}) == {"status_code": 404, "code": "E42"}


def test_a_remembered_secret_is_masked_wherever_it_appears() -> None:
    remember_secrets({"extra_body": {"api_key": KEY}})
    assert scrub_text(f'server said: invalid key "{KEY}"') == 'server said: invalid key "***"'


def test_scrub_masks_secret_keys_at_any_depth_and_keeps_the_rest() -> None:
    options = {
        "base_url": "http://u:pw@h/v1?key=k",
        "api_key_env": "OPENAI_API_KEY",
        "max_tokens": 64,
        "extra_body": {"top_k": 20, "headers": [{"X-Api-Key": "k"}], "auth": {"user": "u"}},
    }
    assert scrub(options) == {
        "base_url": "http://u:***@h/v1?key=***",
        "api_key_env": "OPENAI_API_KEY",
        "max_tokens": 64,
        "extra_body": {"top_k": 20, "headers": [{"X-Api-Key": "***"}], "auth": "***"},
    }
    assert options["extra_body"]["auth"] == {"user": "u"}, "scrub returns a copy"


@pytest.mark.parametrize(
    "name", ["api_key", "apiKey", "x-api-key", "access_token", "client_secret", "password", "sig"]
)
def test_secret_looking_names(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize(
    "name", ["api_key_env", "max_tokens", "stop_token_ids", "top_k", "model", "tokenizer"]
)
def test_names_that_are_not_secrets(name: str) -> None:
    assert not looks_secret(name)


def test_scrub_argv_masks_flag_values() -> None:
    argv = ["vllm", "serve", "m", "--api-key", "abc", "--token=def", "--port", "8000"]
    assert scrub_argv(argv) == ["vllm", "serve", "m", "--api-key", "***", "--token=***", "--port", "8000"]


@pytest.fixture
def server_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line holds a key, standing for a server warmup started."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--api-key", KEY])
    yield proc
    proc.kill()
    proc.wait()


def test_servers_json_keeps_no_credential_and_still_recognises_its_server(
    server_process: subprocess.Popen[bytes],
) -> None:
    cmdline = servers._exec_cmdline(server_process.pid)
    assert cmdline is not None and KEY in cmdline
    client = {"max_concurrency": 2, "extra_body": {"api_key": KEY}}
    record = servers.ServerRecord(
        name="small",
        kind="vllm",
        pid=server_process.pid,
        port=1,
        base_url="http://127.0.0.1:1/v1",
        model="small",
        cmdline=cmdline,
        started_at="2026-01-01T00:00:00+00:00",
        log="/dev/null",
        client=client,
    )
    server_state.write_state({"small": record})

    assert KEY.encode() not in servers.state_file().read_bytes()
    (kept,) = servers.list_servers()  # the masked command line still identifies the live process
    assert kept.cmdline[-2:] == ["--api-key", "***"] and kept.client["extra_body"] == {"api_key": "***"}
    with pytest.raises(EngineConfigError, match=r"servers.json does not keep.*--engines engines.yml"):
        servers.running_engine_config("small")  # never sends '***' as the key
    register_engine("small", backend="vllm", model="m", serve={"kind": "vllm", "client": client})
    config = servers.running_engine_config("small")
    assert config is not None and config.options["extra_body"] == {"api_key": KEY}
    assert json.dumps(config.public_options()).count(KEY) == 0

"""Union inputs (issue 27): ``Chain(input_model=A | B)``, or a first router keyed by model classes;
a dict from every source becomes the variant it fits, or fails naming the record and the variants."""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import httpx
import pytest
from pydantic import BaseModel, Field
from tests.helpers import echo, read_jsonl
from tests.serving.live import LiveServer
from typer.testing import CliRunner
from websockets.sync.client import connect

from chainette import Chain, ChainDefinitionError, ChainService, InputError, Router, Step, register_engine
from chainette.cli import app
from chainette.serving import create_app


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    name: str


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    name: str
    barks: int


class Answer(BaseModel):
    answer: str
    confidence: float


def about(id: str, model: type[BaseModel]) -> Step:
    return Step(
        id=id, input_model=model, output_model=Answer, engine_name="echo", user_prompt=f"{id} {{{{ name }}}}"
    )


def pets() -> Router:
    return Router("pet", {Cat: about("cat", Cat), Dog: about("dog", Dog)})


@pytest.fixture(autouse=True)
def echo_engine() -> None:
    register_engine("echo", backend="fake", responder=echo)


ROWS = [{"name": "Tom"}, {"name": "Rex", "barks": 3}, {"nom": "?"}]


def answers(run_dir: Path) -> dict[int, str]:
    rows = read_jsonl(run_dir / "flattened" / "000.jsonl")
    return {row["_index"]: row["pet.answer"] for row in rows}


def failure(run_dir: Path) -> dict[str, Any]:
    [row] = read_jsonl(run_dir / "failures.jsonl")
    return row


def check_run(run_dir: Path, where: str) -> None:
    assert answers(run_dir) == {0: "re: cat Tom", 1: "re: dog Rex"}
    bad = failure(run_dir)
    assert bad["node"] == "input" and bad["_index"] == 2
    assert where in bad["message"] and "Cat | Dog" in bad["message"]
    assert "variants tried: Cat, Dog" in bad["message"]


def test_a_first_router_keyed_by_classes_takes_dicts_from_an_iterable(tmp_path: Path) -> None:
    """Issue 27: the dicts were never validated into a variant, and every record failed."""
    chain = Chain("pets", [pets()])
    chain.run(ROWS, output_dir=tmp_path / "run")
    failures = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert [f["_index"] for f in failures] == [2], [f["message"] for f in failures]
    check_run(tmp_path / "run", "input #2")
    assert chain.input_variants == (Cat, Dog) and chain.input_model is None


def test_jsonl_rows_become_their_variant(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    Chain("pets", [pets()]).run(path, output_dir=tmp_path / "run")
    check_run(tmp_path / "run", "line 3")


def test_csv_rows_become_their_variant(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "barks"])
        writer.writerow(["Tom", ""])
        writer.writerow(["Rex", "3"])
    chain = Chain("pets", [pets()], input_model=Cat | Dog)
    chain.run(path, output_dir=tmp_path / "run")
    assert answers(tmp_path / "run") == {0: "re: cat Tom", 1: "re: dog Rex"}


@pytest.mark.parametrize(
    "declared",
    [Cat | Dog, Union[Cat, Dog], Annotated[Cat | Dog, Field(discriminator="kind")]],  # noqa: UP007
    ids=["pipe", "Union", "discriminated"],
)
def test_declared_union_inputs_in_every_spelling(tmp_path: Path, declared: Any) -> None:
    chain = Chain("pets", [pets()], input_model=declared)
    rows = [{"kind": "cat", "name": "Tom"}, {"kind": "dog", "name": "Rex", "barks": 3}, {"kind": "cow"}]
    chain.run(rows, output_dir=tmp_path / "run")
    assert answers(tmp_path / "run") == {0: "re: cat Tom", 1: "re: dog Rex"}
    assert "variants tried: Cat, Dog" in failure(tmp_path / "run")["message"]


def test_a_discriminator_decides_even_where_both_variants_would_fit(tmp_path: Path) -> None:
    class Short(BaseModel):
        kind: Literal["short"]
        name: str

    class Long(BaseModel):
        kind: Literal["long"]
        name: str

    chain = Chain(
        "d",
        [Router("pet", {Short: about("cat", Short), Long: about("dog", Long)})],
        input_model=Annotated[Short | Long, Field(discriminator="kind")],
    )
    chain.run([{"kind": "long", "name": "L"}], output_dir=tmp_path / "run")
    assert answers(tmp_path / "run") == {0: "re: dog L"}


def test_an_input_model_that_is_no_model_is_refused() -> None:
    with pytest.raises(ChainDefinitionError, match=r"input_model must be a pydantic model or a union"):
        Chain("bad", [pets()], input_model=int | str)


@pytest.mark.anyio
async def test_service_submissions_become_their_variant() -> None:
    async with ChainService(Chain("pets", [pets()])) as service:
        cat = await (await service.submit({"name": "Tom"})).result()
        dog = await (await service.submit({"name": "Rex", "barks": 2})).result()
        with pytest.raises(InputError, match=r"Cat \| Dog .*variants tried: Cat, Dog"):
            await service.submit({"nom": "?"})
    assert cat.answer == "re: cat Tom" and dog.answer == "re: dog Rex"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_http_and_websocket_take_union_inputs_and_serve_their_schema() -> None:
    with (
        LiveServer(create_app(Chain("pets", [pets()]))) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        schema = client.get("/schema").json()["input"]
        assert [ref["$ref"].rsplit("/", 1)[-1] for ref in schema["anyOf"]] == ["Cat", "Dog"]
        assert set(schema["$defs"]) == {"Cat", "Dog"}
        with client.stream("POST", "/runs", json={"name": "Rex", "barks": 1}) as response:
            assert response.status_code == 200
            outputs = [
                json.loads(line[6:])["output"]
                for line in response.iter_lines()
                if line.startswith("data: ") and '"kind":"output"' in line.replace(" ", "")
            ]
        assert outputs == [{"answer": "re: dog Rex", "confidence": 1.0}]
        refused = client.post("/runs", json={"nom": "?"})
        assert refused.status_code == 422 and "variants tried: Cat, Dog" in refused.json()["message"]
        with connect(server.url.replace("http", "ws") + "/ws") as ws:
            ws.send(json.dumps({"input": {"name": "Tom"}, "trace_id": "w1"}))
            seen = []
            while not seen or seen[-1]["kind"] not in ("output", "failed", "error"):
                seen.append(json.loads(ws.recv(timeout=30)))
    assert seen[-1]["output"]["answer"] == "re: cat Tom"


def test_a_discriminated_union_schema_is_a_one_of() -> None:
    chain = Chain("pets", [pets()], input_model=Annotated[Cat | Dog, Field(discriminator="kind")])
    with LiveServer(create_app(chain)) as server, httpx.Client(base_url=server.url) as client:
        schema = client.get("/schema").json()["input"]
    assert len(schema["oneOf"]) == 2 and schema["discriminator"]["propertyName"] == "kind"


CLI_MODULE = """
from typing import Literal

from pydantic import BaseModel

from chainette import Chain, Router, Step, register_engine

register_engine("echo", backend="fake")


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    name: str


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    name: str
    barks: int


class Answer(BaseModel):
    answer: str


def about(id, model):
    return Step(id=id, input_model=model, output_model=Answer, engine_name="echo", user_prompt=id)


chain = Chain("pets", [Router("pet", {Cat: about("cat", Cat), Dog: about("dog", Dog)})])
"""


@pytest.fixture
def forget_imported_chains(tmp_path: Path) -> Iterator[None]:
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.usefixtures("forget_imported_chains")
def test_cli_run_reads_union_inputs(tmp_path: Path) -> None:
    module = tmp_path / "pets_chain.py"
    module.write_text(textwrap.dedent(CLI_MODULE))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    result = CliRunner().invoke(
        app, ["run", f"{module}:chain", "-i", str(inputs), "-o", str(tmp_path / "run"), "-q"]
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "run" / "flattened" / "000.jsonl")
    assert sorted(r["_index"] for r in rows) == [0, 1]
    assert "variants tried: Cat, Dog" in failure(tmp_path / "run")["message"]


class Bird(BaseModel):
    kind: Literal["bird"] = "bird"
    wings: int


def test_a_declared_union_input_needs_a_route_for_each_variant_before_any_request(tmp_path: Path) -> None:
    chain = Chain("pets", [pets()], input_model=Cat | Dog | Bird)
    [error] = chain.check().errors
    assert error.message == (
        "Router 'pet': the chain's input may be Bird (it is Cat | Dog | Bird), but no route takes Bird. "
        "Add a route keyed by Bird, a default= route, or on_no_match='filter' (or 'pass')."
    )
    with pytest.raises(ChainDefinitionError, match="no route takes Bird"):
        chain.run([{"name": "Tom"}], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    stray = Chain("pets", [pets()], input_model=Cat | Bird)
    messages = [e.message for e in stray.check().errors]
    assert (
        "route 'Dog' is keyed by Dog, which is not a variant of the chain's input (Cat | Bird)" in messages[0]
    )
    assert "no route takes Bird" in messages[1] and len(messages) == 2

"""Routing: PenguiFlow's two routing examples as one chain. Runs on the CPU in a minute or two.

    chainette run examples/routing.py:chain -i examples/routing.jsonl -o runs/routing

PenguiFlow's ``examples/routing_predicate`` sends a request to a ``metrics`` or a ``general``
node by a predicate on its text (``predicate_router``); ``examples/routing_union`` sends a
``SearchWeb | SearchSql`` discriminated union to the node of its variant (``union_router``).
Here both are :class:`chainette.Router` nodes, one after the other:

1. ``triage``, by predicate: a request starting with "metric" goes to the ``metrics`` step,
   any other to ``general`` (each an LLM step); ``{{ triage.summary }}`` is whichever ran.
2. ``plan`` (Python) turns each request into a search task: metric requests become
   ``SearchSql`` over the metric's table, the others ``SearchWeb`` for the request's text.
3. ``search``, by model class: a ``SearchWeb`` goes to the ``web`` LLM step, a ``SearchSql``
   to the ``sql`` Python function (PenguiFlow's ``handle_sql``: ``"sql::<table>"``).
4. ``report`` (Python) reads the record (which route ran, the task) into one flat row.

The engine is the embedded llama.cpp back-end with its bundled SmolLM2-135M model, as in
``examples/quickstart.py``; tests register a fake engine under the same name, ``local``.
"""

from typing import Literal

from pydantic import BaseModel, Field

from chainette import Chain, RecordView, Router, SamplingParams, Step, apply, register_engine

ENGINE = "local"
register_engine(ENGINE, backend="llama_cpp", n_ctx=2048)


class Request(BaseModel):
    text: str


class Brief(BaseModel):
    summary: str = Field(max_length=80, description="What the request asks for, in a few words")


class SearchWeb(BaseModel):
    kind: Literal["web"] = "web"
    query: str


class SearchSql(BaseModel):
    kind: Literal["sql"] = "sql"
    table: str


class Found(BaseModel):
    result: str = Field(max_length=100)


class Report(BaseModel):
    request: str
    triage: Literal["metrics", "general"]
    search: Literal["web", "sql"]
    result: str


def brief(id: str, system: str) -> Step:
    return Step(
        id=id,
        input_model=Request,
        output_model=Brief,
        engine_name=ENGINE,
        sampling=SamplingParams(temperature=0, max_tokens=64),
        system_prompt=system,
        user_prompt="Request: {{ text }}\nSay in a few words what it asks for.",
    )


def is_metric(request: Request) -> str:
    """PenguiFlow's predicate: ``["metrics"] if msg.payload.startswith("metric") else ["general"]``."""
    return "metrics" if request.text.startswith("metric") else "general"


triage = Router(
    "triage",
    {
        "metrics": brief(
            "metrics", "You are a metrics analyst. You name the business metric a request is about."
        ),
        "general": brief("general", "You are a helpful assistant. You restate requests briefly."),
    },
    by=is_metric,
)


def plan(summary: Brief, record: RecordView) -> SearchWeb | SearchSql:
    """Metric requests are looked up in the metric's table; anything else is searched on the web."""
    text = record.input.text
    if "metrics" in record:  # the triage route that ran
        return SearchSql(table=text.split()[0].removeprefix("metric-").replace("-", "_"))
    return SearchWeb(query=text)


web = Step(
    id="web",
    input_model=SearchWeb,
    output_model=Found,
    engine_name=ENGINE,
    sampling=SamplingParams(temperature=0, max_tokens=64),
    system_prompt="You suggest the title of one web page that answers a search.",
    user_prompt="Search: {{ query }}\nOne page title.",
)


def sql(task: SearchSql) -> Found:
    """PenguiFlow's ``handle_sql``."""
    return Found(result=f"sql::{task.table}")


search = Router("search", {SearchWeb: web, SearchSql: apply(sql)})


def report(found: Found, record: RecordView) -> Report:
    return Report(
        request=record.input.text,
        triage="metrics" if "metrics" in record else "general",
        search=record["plan"].kind,
        result=found.result,
    )


chain = Chain(
    name="Routing: by predicate, then by model class",
    steps=[triage, apply(plan), search, apply(report)],
)

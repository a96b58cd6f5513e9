"""Hypothesis pieces shared by the property tests of the pydantic models users fill in
(``SamplingParams``, ``EngineConfig``): any value for any field, and the check that construction
either stays within the documented ranges or fails naming a field the caller gave."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

#: The autouse plugin-environment fixture is function-scoped; it holds no state between examples.
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: The slow-marked twins of the construction tests.
LONG = settings(FAST, max_examples=5000)

#: Any JSON-ish or Python value a caller might pass by mistake, numbers at every scale included.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(),
    st.sampled_from(["", "1", " 2 ", "0.5", "nan", "inf", "-inf", "1e400", "true", "float32", "float32\n", "\ud800"]),
    st.text(st.characters(exclude_categories=()), max_size=6),
    st.binary(max_size=4),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def arbitrary_kwargs(fields: Sequence[str], **given: Any) -> st.SearchStrategy[dict[str, Any]]:
    """``given`` plus up to six of ``fields`` with any value, sometimes a misspelt field too."""

    @st.composite
    def kwargs(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.lists(st.sampled_from(fields), unique=True, max_size=6))
        drawn = {name: draw(ANYTHING) for name in names}
        if not draw(st.integers(0, 3)):
            drawn[draw(st.sampled_from(fields)) + "s"] = draw(ANYTHING)  # not a field: refused by name
        return {**given, **drawn}

    return kwargs()


def check_construction(model: type[Model], kwargs: dict[str, Any], assert_within_ranges: Callable[[Model], None]) -> None:
    """``model(**kwargs)`` either holds values within the documented ranges, or raises a
    ValidationError each of whose errors names a field the caller gave."""
    try:
        built = model(**kwargs)
    except ValidationError as exc:
        errors = exc.errors()
        assert errors
        for error in errors:
            if error["loc"]:
                assert error["loc"][0] in kwargs, error
            else:  # a check across fields: its message names them
                assert any(name in error["msg"] for name in kwargs), error
        return
    assert_within_ranges(built)

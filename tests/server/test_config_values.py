"""Config field values (server/config_values.py): strings from the environment convert, and a
bad value is a ConfigError naming the field and the value."""

from __future__ import annotations

import pytest

from detserve.server import config_values as cv


def test_values_from_the_environment_convert() -> None:
    assert cv.as_int("8", "port", 0, 65535) == 8
    assert cv.as_float("0.25", "drain_grace_s", 0.0) == 0.25
    assert (cv.as_bool("Yes", "reflection"), cv.as_bool("off", "reflection")) == (True, False)
    assert cv.optional_port("none", "metrics_port") is None
    assert cv.optional_port("9100", "metrics_port") == 9100
    assert cv.unset("") and cv.unset(None) and cv.unset("Off") and not cv.unset("0")


@pytest.mark.parametrize(("call", "message"), [
    (lambda: cv.as_int("8x", "port", 0, 65535),
     "config field 'port' must be an integer in [0, 65535], got '8x'"),
    (lambda: cv.as_int(True, "workers", 1),
     "config field 'workers' must be an integer >= 1, got True"),
    (lambda: cv.as_int(0, "workers", 1), "config field 'workers' must be an integer >= 1, got 0"),
    (lambda: cv.as_float("nan", "drain_grace_s", 0.0),
     "config field 'drain_grace_s' must be a number >= 0.0, got nan"),
    (lambda: cv.as_bool("maybe", "reflection"),
     "config field 'reflection' must be true or false, got 'maybe'"),
    (lambda: cv.as_str("", "host"), "config field 'host' must be a non-empty string, got ''"),
    (lambda: cv.as_mapping([1], "alerts"), "config field 'alerts' must be a mapping, got [1]"),
    (lambda: cv.check_keys({"porrt": 1, "host": "h"}, ("host", "port"), "file"),
     "config file has unknown field(s) ['porrt']; allowed: ['host', 'port']"),
])
def test_bad_values_name_the_field_and_the_value(call: object, message: str) -> None:
    with pytest.raises(cv.ConfigError) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value) == message

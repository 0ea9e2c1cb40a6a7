"""The webhook retry schedule and Retry-After parsing."""

import datetime
import email.utils

import pytest

from services.notify.schedule import SQS_MAX_VISIBILITY_S, RetrySchedule, parse_retry_after
from shared.config import NotifySettings
from shared.errors import ConfigError

NOW = datetime.datetime(2026, 11, 3, 20, 26, 10, tzinfo=datetime.UTC)
WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DB = "postgresql://conveyor@db.internal:5432/conveyor"


def test_each_retry_waits_its_delay_then_gives_up() -> None:
    schedule = RetrySchedule((5, 300, 1800))
    assert schedule.max_attempts == 4
    assert [schedule.next_delay(n) for n in (1, 2, 3)] == [5, 300, 1800]
    assert schedule.next_delay(4) is None
    assert schedule.next_delay(50) is None


def test_empty_schedule_means_one_attempt() -> None:
    schedule = RetrySchedule(())
    assert schedule.max_attempts == 1
    assert schedule.next_delay(1) is None


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        RetrySchedule((5,)).next_delay(0)


def test_retry_after_lengthens_but_never_shortens() -> None:
    schedule = RetrySchedule((5, 300))
    assert schedule.next_delay(1, 60) == 60
    assert schedule.next_delay(2, 60) == 300
    assert schedule.next_delay(1, 0) == 5
    assert schedule.next_delay(2, 600) is not None


def test_retry_after_does_not_revive_a_finished_schedule() -> None:
    assert RetrySchedule((5,)).next_delay(2, 1) is None


def test_waits_are_capped_at_the_sqs_visibility_maximum() -> None:
    assert SQS_MAX_VISIBILITY_S == 43_200
    schedule = RetrySchedule((5, 100_000))
    assert schedule.next_delay(1, 10 * 86_400) == SQS_MAX_VISIBILITY_S
    assert schedule.next_delay(2) == SQS_MAX_VISIBILITY_S
    assert RetrySchedule((5,), max_delay_s=30).next_delay(1, 3600) == 30


def test_non_finite_retry_after_is_ignored() -> None:
    assert RetrySchedule((5,)).next_delay(1, float("inf")) == 5
    assert RetrySchedule((5,)).next_delay(1, float("nan")) == 5


@pytest.mark.parametrize("delays", [(-1.0,), (float("nan"),), (float("inf"),)])
def test_invalid_delays_are_refused(delays: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="finite"):
        RetrySchedule(delays)


def test_schedule_is_frozen() -> None:
    schedule = RetrySchedule((5,))
    with pytest.raises(AttributeError):
        schedule.delays_s = (1,)  # type: ignore[misc]


def test_from_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("NOTIFY_WEBHOOK_SECRET", WHSEC)
    clean_env.setenv("NOTIFY_RETRY_SCHEDULE_S", "0.1,0.2")
    schedule = RetrySchedule.from_settings(NotifySettings())
    assert schedule.delays_s == (0.1, 0.2)
    default = NotifySettings(retry_schedule_s=(5, 300, 1800, 7200, 18000, 36000, 36000))
    assert RetrySchedule.from_settings(default).max_attempts == 8


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("120", 120.0), (" 7 ", 7.0), ("000030", 30.0), ("86400", 86400.0)],
)
def test_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_http_date_in_the_future() -> None:
    when = NOW + datetime.timedelta(seconds=90)
    assert parse_retry_after(email.utils.format_datetime(when, usegmt=True), NOW) == 90.0
    assert parse_retry_after("Tue, 03 Nov 2026 20:28:10 GMT", NOW) == 120.0


def test_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Tue, 03 Nov 2026 20:00:00 GMT", NOW) == 0.0


def test_obsolete_http_date_forms() -> None:
    # RFC 9110 asks recipients to accept the RFC 850 and asctime forms too; -0000 is UTC.
    assert parse_retry_after("Tue, 03 Nov 2026 20:27:10 -0000", NOW) == 60.0
    assert parse_retry_after("Tuesday, 03-Nov-26 20:27:10 GMT", NOW) == 60.0
    assert parse_retry_after("Tue Nov  3 20:27:10 2026", NOW) == 60.0


def test_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Tue, 03 Nov 2026 20:27:10 GMT", naive) == 60.0


def test_default_now_is_the_current_time() -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    seconds = parse_retry_after(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 3590 <= seconds <= 3600


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "1e3",
        "0x10",
        "+10",
        "\u0661\u0662",  # Arabic-Indic digits: str.isdigit says yes, HTTP says no
        "9" * 5000,
        "Tue, 32 Nov 2026 20:27:10 GMT",
        "Tue, 03 Foo 2026 20:27:10 GMT",
        "Tue, 03 Nov 2026 25:27:10 GMT",
        "120 seconds",
        "Tue, 03 Nov 2026",
        "\x00",
    ],
)
def test_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None

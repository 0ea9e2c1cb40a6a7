import datetime
import time

import moto.core.utils as moto_utils
import moto.sqs.models as sqs_models

from emulator import moto_clock


def test_fast_clock_agrees_with_motos_clock() -> None:
    moments = [
        datetime.datetime(1970, 1, 1),  # noqa: DTZ001 - moto uses naive UTC
        datetime.datetime(2026, 11, 29, 23, 59, 59, 999_999),  # noqa: DTZ001
        datetime.datetime(2000, 2, 29, 12, 0, 0, 1),  # noqa: DTZ001
    ]
    for dt in moments:
        assert moto_clock.fast_unix_time(dt) == moto_utils.unix_time(dt)
        assert moto_clock.fast_unix_time_millis(dt) == moto_utils.unix_time_millis(dt)
    aware = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert moto_clock.fast_unix_time(aware) == aware.timestamp()
    assert abs(moto_clock.fast_unix_time() - moto_utils.unix_time()) < 0.5
    assert abs(moto_clock.fast_unix_time_millis() - time.time() * 1000) < 500


def test_install_rebinds_motos_sqs_clock() -> None:
    moto_clock.install()
    moto_clock.install()  # idempotent
    assert moto_clock.installed()
    assert sqs_models.unix_time is moto_clock.fast_unix_time
    assert sqs_models.unix_time_millis is moto_clock.fast_unix_time_millis

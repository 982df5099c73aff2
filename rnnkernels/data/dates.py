"""builtin:dates: human-written dates -> ISO 8601 (YYYY-MM-DD), a seeded synthetic translation task.

Days from 1950-01-01 to 2049-12-31 are shuffled with the seed and split into
disjoint pools (test 10%, valid 5%, train the rest), so a held-out date never
appears in training under any format. Two-digit years are unambiguous in this
range (50-99 -> 19xx, 00-49 -> 20xx), and day-first and month-first numeric
formats differ in their separators or year width, so every source has one answer.
"""
import datetime
import random
from typing import Callable, Dict, List, Tuple

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d: datetime.date) -> str:
    return MONTHS[d.month - 1]


def _mon(d: datetime.date) -> str:
    return MONTHS[d.month - 1][:3]


def _weekday(d: datetime.date) -> str:
    return WEEKDAYS[d.weekday()]


# name -> formatter; each one's output determines the date.
FORMATS: Dict[str, Callable[[datetime.date], str]] = {
    "d mon yyyy": lambda d: f"{d.day} {_mon(d)} {d.year}",                            # 25 Nov 2026
    "dd month yyyy": lambda d: f"{d.day:02d} {_month(d)} {d.year}",                   # 25 November 2026
    "mm/dd/yy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",            # 11/25/26
    "m/d/yyyy": lambda d: f"{d.month}/{d.day}/{d.year}",                              # 11/25/2026 (US)
    "dd.mm.yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",                    # 25.11.2026
    "d.m.yy": lambda d: f"{d.day}.{d.month}.{d.year % 100:02d}",                      # 25.11.26
    "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",                    # 2026/11/25
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",                        # 20261125
    "weekday, month d, yyyy": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "month d, yyyy": lambda d: f"{_month(d)} {d.day}, {d.year}",                      # November 25, 2026
    "mon d yyyy": lambda d: f"{_mon(d).lower()} {d.day} {d.year}",                    # nov 25 2026
    "wkd d mon yyyy": lambda d: f"{_weekday(d)[:3]} {d.day} {_mon(d)} {d.year}",      # Wed 25 Nov 2026
    "the dth of month, yyyy": lambda d: f"the {_ordinal(d.day)} of {_month(d)}, {d.year}",
    "month dth, yyyy": lambda d: f"{_month(d)} {_ordinal(d.day)}, {d.year}",          # November 25th, 2026
    "d-mon-yy": lambda d: f"{d.day:02d}-{_mon(d).upper()}-{d.year % 100:02d}",         # 25-NOV-26
    "dd month yyyy upper": lambda d: f"{d.day} {_month(d).upper()} {d.year}",         # 25 NOVEMBER 2026
}


def date_pools(seed: int) -> Dict[str, List[datetime.date]]:
    """Disjoint day pools {'train', 'valid', 'test'} from one seeded shuffle."""
    days = [FIRST_DAY + datetime.timedelta(n) for n in range((LAST_DAY - FIRST_DAY).days + 1)]
    random.Random(seed).shuffle(days)
    n_test, n_valid = len(days) // 10, len(days) // 20
    return {"test": days[:n_test], "valid": days[n_test:n_test + n_valid], "train": days[n_test + n_valid:]}


def date_examples(count: int, pool: List[datetime.date], rng: random.Random, distinct: bool) -> List[Tuple[str, str]]:
    """count (source, ISO target) pairs, each a random day of the pool in a random format."""
    days = rng.sample(pool, count) if distinct else [rng.choice(pool) for _ in range(count)]
    names = sorted(FORMATS)
    return [(FORMATS[rng.choice(names)](d), d.isoformat()) for d in days]


def dates_splits(seed: int = 0, train_size: int = 50_000, valid_size: int = 1000, test_size: int = 1000):
    """{'train', 'valid', 'test'}: lists of (source, target) strings. Valid and test
    use distinct days; train draws days (with repetition) from its own pool."""
    pools = date_pools(seed)
    rng = random.Random(seed + 1)
    return {
        "train": date_examples(train_size, pools["train"], rng, distinct=False),
        "valid": date_examples(valid_size, pools["valid"], rng, distinct=True),
        "test": date_examples(test_size, pools["test"], rng, distinct=True),
    }

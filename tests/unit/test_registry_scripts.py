"""The registry's script codec: the names each side uses for KEYS and ARGV come from one list."""

import re

from chalicelib.registry import scripts


def test_every_argument_of_the_message_and_budget_scripts_is_named_once_in_order():
    for keys, args, name in (
        (scripts.MessageKeys, scripts.MessageArgs, "message"),
        (scripts.BudgetKeys, scripts.BudgetArgs, "budget"),
    ):
        header = scripts.named_locals(keys, args)
        assert [line.split(" = ")[1] for line in header.splitlines()][: len(keys._fields)] == [
            f"KEYS[{n}]" for n in range(1, len(keys._fields) + 1)
        ]
        assert f"ARGV[{len(args._fields)}]" in header
        body = scripts.source(name)
        assert not re.search(r"\b(KEYS|ARGV)\[", body.split("-- uses:")[1]), f"{name}.lua counts by hand"


def test_arguments_go_to_redis_as_it_takes_them():
    args = scripts.BudgetArgs(
        budget=10, count=2, mode="take", reserve=2, backlog=3000.0, test_now=-1, history_size=0,
        history_ttl=600, position_ttl=86400, payload=b"{}",
    )  # fmt: skip
    assert scripts.args_of(args) == [10, 2, "take", 2, 3000.0, -1, 0, 600, 86400, b"{}"]
    assert scripts.args_of(scripts.MessageArgs(*["x"] * 8, True, False, *[0] * 15))[8:10] == [1, 0]


def test_a_script_comes_with_the_libraries_it_names_and_no_others():
    message, leave = scripts.source("message"), scripts.source("leave")
    for function in ("local function allowed", "local function level", "local function recover"):
        assert function in message
    assert "local function" not in leave

"""Oracles for MiniWoB++ task types: the next action from the instruction's parsed fields and the page as it is.

Each oracle is a function `(fields, page) -> action` of the current state alone (it reads what is checked, typed or
open on the page), so it works from any state of its episode. The fields come from the `miniwob` package's own
extractor for the task type (`miniwob.fields`); the page is an `eexp.envs.miniwob_env.Page`. An oracle that cannot
find what it needs raises OracleFailed (the expert reports it with the task id).

Task types with an oracle: the keys of ORACLES, the 27 task types of the environment (tests/test_miniwob.py solves
seeds 0-19 of each). Every other MiniWoB task type (about 100: drawing, dragging, colour and shape tasks, the email,
flight and social-media pages, the delayed variants of click-collapsible and use-autocomplete, ...) has none.
"""

from __future__ import annotations

import re
from typing import Callable


class OracleFailed(Exception):
    """The oracle found no action for this page."""


def fields_of(task_type: str, utterance: str) -> dict[str, str]:
    """The instruction's fields, by the miniwob package's extractor (an empty dict for a type that has none)."""
    from miniwob.fields import FIELD_EXTRACTORS

    extractor = FIELD_EXTRACTORS.get(task_type)
    if extractor is None:
        return {}
    try:
        return {k: v for k, v in extractor(utterance)}
    except ValueError as e:
        raise OracleFailed(str(e)) from None


def first(found: list, what: str):
    if not found:
        raise OracleFailed(f"no {what} on the page")
    return found[0]


def click(element) -> str:
    return f"click[{element.ref}]"


def type_into(element, text: str) -> str:
    return f"type[{element.ref}][{text}]"


def submit(page, text: str | None = None):
    buttons = [
        e
        for e in page.elements
        if e.tag == "button" and (text is None and e.id == "subbtn" or text is not None and e.text.lower() == text)
    ]
    return click(first(buttons, f"{text or 'Submit'} button"))


def fill_then_submit(page, pairs: list[tuple[object, str]], button: str | None = None) -> str:
    """Type each (field, text) whose value differs, then click the submit button."""
    for element, text in pairs:
        if element.value != text:
            return type_into(element, text)
    return submit(page, button)


def text_inputs(page) -> list:
    return [e for e in page.elements if e.tag in ("input_text", "input_password", "textarea")]


# --- clicking ------------------------------------------------------------------------------------------------------
def click_button(fields, page):
    return click(first(page.find(tag="button", text=fields["target"]), f"button {fields['target']!r}"))


def click_button_sequence(fields, page):
    # clicking ONE moves nothing on the page; TWO is clicked once ONE has been (the episode ends then)
    one, two = first(page.find(id="subbtn"), "button ONE"), first(page.find(id="subbtn2"), "button TWO")
    return click(two) if one.focused else click(one)


def click_link(fields, page):
    return click(first(page.find(tag="span", text=fields["target"]), f"link {fields['target']!r}"))


def click_dialog(fields, page):
    return click(
        first(
            [e for e in page.elements if e.tag == "button" and "ui-dialog-titlebar-close" in e.classes],
            "dialog close button",
        )
    )


def click_dialog_2(fields, page):
    target = fields["target"]
    if target.lower() == "x":
        return click_dialog(fields, page)
    return click(first(page.find(tag="button", text=target), f"button {target!r}"))


def _checkbox_for(page, label_text: str, kind: str):
    for label in page.find(tag="label", text=label_text):
        boxes = [e for e in label.descendants() if e.tag == kind]
        if boxes:
            return boxes[0]
    raise OracleFailed(f"no {kind} labelled {label_text!r}")


def click_checkboxes(fields, page):
    wanted = [v for k, v in sorted(fields.items()) if k.startswith("target") and v]
    for text in wanted:
        box = _checkbox_for(page, text, "input_checkbox")
        if not box.checked:
            return click(box)
    return submit(page)


def click_option(fields, page):
    box = _checkbox_for(page, fields["target"], "input_radio")
    return submit(page) if box.checked else click(box)


def click_tab(fields, page):
    return click(first(page.find(tag="a", text=f"Tab #{fields['target']}"), f"tab #{fields['target']}"))


def click_test(fields, page):
    return click(first(page.find(id="subbtn"), "button"))


def click_test_2(fields, page):
    return click(first(page.find(tag="button", text=fields["target"]), f"button {fields['target']!r}"))


def click_collapsible(fields, page):
    button = [e for e in page.find(id="subbtn")]
    header = first(page.find(tag="h3"), "section header")
    if "ui-state-active" not in header.classes:
        return click(header)
    return click(first(button, "Submit button"))


# --- typing --------------------------------------------------------------------------------------------------------
def enter_text(fields, page):
    return fill_then_submit(page, [(first(text_inputs(page), "text field"), fields["target"])])


def enter_text_2(fields, page):
    text = fields["text"].upper() if fields["case"] == "upper" else fields["text"].lower()
    return fill_then_submit(page, [(first(text_inputs(page), "text field"), text)])


def enter_password(fields, page):
    return fill_then_submit(
        page,
        [
            (first(page.find(id="password"), "password field"), fields["target"]),
            (first(page.find(id="verify"), "verify field"), fields["target"]),
        ],
    )


def focus_text(fields, page):
    return click(first(text_inputs(page), "text field"))


def focus_text_2(fields, page):
    n = int(fields["target"])
    inputs = text_inputs(page)
    if len(inputs) < n:
        raise OracleFailed(f"fewer than {n} text fields")
    return click(inputs[n - 1])


def login_user(fields, page):
    return fill_then_submit(
        page,
        [
            (first(page.find(id="username"), "username field"), fields["username"]),
            (first(page.find(id="password"), "password field"), fields["password"]),
        ],
        button="login",
    )


def choose_list(fields, page):
    box = first([e for e in page.elements if e.options is not None], "list")
    if box.selected != fields["target"]:
        return f"select[{box.ref}][{fields['target']}]"
    return click(first(page.find(tag="button", text="Submit"), "Submit button"))


def use_autocomplete(fields, page):
    start, end = fields.get("start", ""), fields.get("end", "")
    field = first(page.find(id="tags"), "tags field")
    value = str(field.value or "")
    if value.startswith(start) and value.endswith(end) and len(value) > len(start):
        return submit(page)
    items = [
        e
        for e in page.elements
        if "ui-menu-item-wrapper" in e.classes or (e.tag == "li" and "ui-menu-item" in e.classes and e.text)
    ]
    matches = [e for e in items if e.text.startswith(start) and e.text.endswith(end)]
    if matches:
        return click(matches[0])
    if value != start:
        return type_into(field, start)
    raise OracleFailed(f"no suggestion starts with {start!r} and ends with {end!r}")


def _arithmetic(expression: str) -> int:
    m = re.fullmatch(r"\s*(-?\d+)\s*([-+x*])\s*(-?\d+)\s*=\s*", expression)
    if not m:
        raise OracleFailed(f"cannot read the problem {expression!r}")
    a, op, b = int(m[1]), m[2], int(m[3])
    return a + b if op == "+" else a - b if op == "-" else a * b


def simple_arithmetic(fields, page):
    problem = first(page.find(id="math-problem"), "math problem")
    answer = first(page.find(id="math-answer"), "answer field")
    return fill_then_submit(page, [(answer, str(_arithmetic(problem.text)))])


def _solve_for_x(equation: str) -> int:
    left, _, right = equation.partition("=")
    left, right = left.replace(" ", ""), right.replace(" ", "")
    if "x" in right:
        left, right = right, left
    total = int(right)
    m = re.fullmatch(r"(-?\d+)([-+])x|x([-+])(-?\d+)", left)
    if not m:
        raise OracleFailed(f"cannot read the equation {equation!r}")
    if m[1] is not None:  # a + x = t  or  a - x = t
        return total - int(m[1]) if m[2] == "+" else int(m[1]) - total
    return total - int(m[4]) if m[3] == "+" else total + int(m[4])


def simple_algebra(fields, page):
    problem = first(page.find(id="math-problem"), "equation")
    answer = first(page.find(id="math-answer"), "answer field")
    return fill_then_submit(page, [(answer, str(_solve_for_x(problem.text)))])


def find_word(fields, page):
    paragraph = first(page.find(tag="p"), "paragraph")
    words = paragraph.text.split()
    n = int(fields["target"])
    if len(words) < n:
        raise OracleFailed(f"fewer than {n} words")
    word = re.sub(r"[^a-zA-Z0-9]", "", words[n - 1])
    return fill_then_submit(page, [(first(page.find(id="answer-input"), "answer field"), word)])


def read_table(fields, page):
    cells = page.find(tag="td")
    for i, cell in enumerate(cells[:-1]):
        if cell.text == fields["target"]:
            return fill_then_submit(page, [(first(page.find(id="tt"), "text field"), cells[i + 1].text)])
    raise OracleFailed(f"no row {fields['target']!r}")


def odd_or_even(fields, page):
    for number in page.find(cls="display-number"):
        row = number.parent.parent if number.parent is not None else None
        buttons = [e for e in row.descendants() if e.tag == "button"] if row is not None else []
        want = "Even" if int(number.text) % 2 == 0 else "Odd"
        chosen = [b for b in buttons if b.text == want]
        if not chosen:
            raise OracleFailed(f"no {want} button next to {number.text}")
        if "selected" not in chosen[0].classes:
            return click(chosen[0])
    return click(first(page.find(id="submit"), "Submit button"))


ORACLES: dict[str, Callable] = {
    "click-button": click_button,
    "click-button-sequence": click_button_sequence,
    "click-link": click_link,
    "click-dialog": click_dialog,
    "click-dialog-2": click_dialog_2,
    "click-checkboxes": click_checkboxes,
    "click-checkboxes-transfer": click_checkboxes,
    "click-option": click_option,
    "click-tab": click_tab,
    "click-test": click_test,
    "click-test-2": click_test_2,
    "click-collapsible-nodelay": click_collapsible,
    "enter-text": enter_text,
    "enter-text-dynamic": enter_text,
    "enter-text-2": enter_text_2,
    "enter-password": enter_password,
    "focus-text": focus_text,
    "focus-text-2": focus_text_2,
    "login-user": login_user,
    "choose-list": choose_list,
    "use-autocomplete-nodelay": use_autocomplete,
    "simple-arithmetic": simple_arithmetic,
    "simple-algebra": simple_algebra,
    "find-word": find_word,
    "read-table": read_table,
    "odd-or-even": odd_or_even,
    "unicode-test": click_button,
}

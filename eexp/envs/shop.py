"""`shop`: a small WebShop-like store, pure Python and deterministic.

Each task is a small world generated from its id: a target product and distractors that share some of its
attributes (same name but over budget or without the wanted color or size, one attribute different, other
categories with a shared word). The instruction names the category, two attributes, the options and a budget;
the policy searches, reads the result pages (3 items a page, `next >` / `< prev`), opens an item, picks its
options and buys. The score is WebShop's: the fraction of goal attributes, options and price matched, times a
type match; success is a score of 1.

Observations are short (well under 300 tokens) and the vocabulary is small on purpose: the CPU demo trains a
model of about a million parameters from scratch on it. Admissible actions are closed: on the search page a few
candidate queries (the one the instruction implies among plausible ones from the catalogue), elsewhere the
buttons. Any `search[...]` is still accepted on the search page.

Splits: train (5000 tasks) and test (1000) over ten categories; two out-of-distribution splits, for two kinds of
model:
- ood (1000): two categories that never occur in train or test worlds, with attributes seen elsewhere. It tests a
  pretrained model's transfer; for a model made from scratch the category words are out of its vocabulary (its
  tokenizer and weights never saw them), so there it measures vocabulary, not generalisation.
- combo (1000): every word is one the train split uses, in combinations it never does: a train category with one
  of its own attributes and one that, in train, only other categories have ("leather mug", "waterproof jeans").
  The search candidates, distractors and options are drawn as in train, so a policy that reads the instruction
  and copies its words transfers, and one that learned "mug goes with ceramic" does not.
"""

from __future__ import annotations

import copy
import random
import re
from functools import lru_cache

from eexp.envs.base import NumberedTasks
from eexp.errors import EnvError
from eexp.text import normalize_space

# category -> (attributes, options, (min price, max price)); attributes are in a fixed order, so the goal's
# attribute phrase (and the query the instruction implies) is always written the same way.
CATEGORIES: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[int, int]]] = {
    "t-shirt": (
        ("cotton", "linen", "organic", "slim fit", "v-neck", "long sleeve"),
        {"size": ("s", "m", "l", "xl")},
        (8, 40),
    ),
    "hoodie": (
        ("fleece", "cotton", "zip up", "oversized", "lightweight", "pocket"),
        {"size": ("s", "m", "l", "xl")},
        (20, 70),
    ),
    "jeans": (
        ("stretch", "slim fit", "high waist", "ripped", "relaxed", "dark wash"),
        {"size": ("28", "30", "32", "34", "36")},
        (25, 90),
    ),
    "sneakers": (
        ("leather", "canvas", "running", "waterproof", "lightweight", "slip on"),
        {"size": ("7", "8", "9", "10", "11")},
        (30, 120),
    ),
    "backpack": (("waterproof", "leather", "laptop", "lightweight", "canvas", "travel"), {}, (20, 90)),
    "mug": (("ceramic", "glass", "insulated", "large", "travel", "dishwasher safe"), {}, (5, 30)),
    "desk lamp": (("led", "dimmable", "usb", "clamp", "wooden", "metal"), {}, (15, 60)),
    "headphones": (("wireless", "noise cancelling", "over ear", "foldable", "bluetooth", "usb"), {}, (20, 150)),
    "pillow": (
        ("memory foam", "cotton", "cooling", "down", "firm", "soft"),
        {"size": ("standard", "queen", "king")},
        (10, 60),
    ),
    "phone case": (("leather", "silicone", "clear", "magnetic", "slim", "shockproof"), {}, (5, 35)),
    # ood only
    "jacket": (
        ("waterproof", "fleece", "lightweight", "hooded", "leather", "insulated"),
        {"size": ("s", "m", "l", "xl")},
        (40, 150),
    ),
    "water bottle": (("insulated", "glass", "stainless steel", "leak proof", "lightweight", "large"), {}, (8, 40)),
}
OOD_CATEGORIES = ("jacket", "water bottle")
IN_DIST = tuple(c for c in CATEGORIES if c not in OOD_CATEGORIES)
COLORS = ("red", "blue", "black", "white", "green", "gray", "pink", "yellow")
BRANDS = ("nova", "apex", "zen", "orbit", "pike", "luma", "vero", "kiko", "brio", "tula", "mako", "rio")
# Per train category, the attributes only other train categories have: combo's second attribute comes from here.
BORROWED = {c: tuple(sorted({a for o in IN_DIST for a in CATEGORIES[o][0]} - set(CATEGORIES[c][0]))) for c in IN_DIST}
SPLIT_SIZES = {"train": 5000, "test": 1000, "ood": 1000, "combo": 1000}
PER_PAGE = 3
TEMPLATES = (
    "i need {a}{item} in {options}, under {budget} dollars",
    "find me {a}{item}, {options}, priced under {budget} dollars",
    "i am looking for {a}{item} in {options} that costs less than {budget} dollars",
)
_ACTION = re.compile(r"^(search|click)\[(.*)\]$")


PLURAL = ("sneakers", "jeans", "headphones")


def article(item: str) -> str:
    """ "a " / "an " before the item, nothing before a plural one."""
    if item.endswith(PLURAL):
        return ""
    return "an " if item[0] in "aeiou" else "a "


def purchase_score(goal: dict, product: dict, selected: dict[str, str]) -> float:
    """WebShop's reward for buying `product` with the options `selected` (option -> value): (attributes + options +
    price matched) / (their number), times the type match."""
    attrs = sum(a in product["attrs"] for a in goal["attrs"])
    options = sum(selected.get(k) == v for k, v in goal["options"].items())
    price = product["price"] < goal["budget"]
    total = (attrs + options + price) / (len(goal["attrs"]) + len(goal["options"]) + 1)
    same_type = 1.0 if product["category"] == goal["category"] else 0.1
    return round(total * same_type, 4)


# A page's text as read_text reads it: the purchase page, a [button] (the names of the results, the options, the
# navigation), an item page's `selected:` line
_BOUGHT = re.compile(r"you bought (.+)\. thank you for shopping\.")
_BUTTON = re.compile(r"\[([^\[\]\n]+)\]")
_SELECTED = re.compile(r"^selected: (.*)$", re.MULTILINE)


def _read_purchase(goal: dict, world: dict, name: str, before: list[str]) -> float:
    """shop's score of buying the product named `name`, its options read from the last page of it in `before`."""
    product = next((p for p in world["products"] if p["name"] == name), None)
    if product is None:
        return 0.0
    selected: dict[str, str] = {}
    for page in reversed(before):
        page = page.strip()
        if page.startswith("invalid action:"):  # a refusal shows the page it left the episode on under it
            page = page.partition("\n")[2].strip()
        if page.partition("\n")[0].strip() == name:
            shown = _SELECTED.search(page)
            values = [v.strip() for v in shown.group(1).split(",")] if shown else []
            for key, allowed in product["options"].items():
                chosen = [v for v in values if v in allowed]
                if chosen:
                    selected[key] = chosen[-1]
            break
    return purchase_score(goal, product, selected)


def _tokens(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _product(brand, category, attrs, colors, options, price) -> dict:
    name = f"{brand} {' '.join(attrs)} {category}"
    return {
        "name": name,
        "brand": brand,
        "category": category,
        "attrs": tuple(attrs),
        "price": price,
        "options": {"color": tuple(colors), **{k: tuple(v) for k, v in options.items()}},
        "tokens": _tokens(name),
    }


def _pick_attrs(rng: random.Random, category: str, k: int = 2) -> tuple[str, ...]:
    pool = CATEGORIES[category][0]
    return tuple(sorted(rng.sample(pool, k), key=pool.index))


def attribute_pool(goal: dict) -> tuple[str, ...]:
    """The attributes products of the goal's category carry in its world: the category's own, and in a combo task
    the borrowed one (last, so the goal's phrase reads "<own> <borrowed> <category>")."""
    return (
        CATEGORIES[goal["category"]][0] + tuple(a for a in goal["attrs"] if a in BORROWED[goal["category"]])
        if goal.get("combo")
        else CATEGORIES[goal["category"]][0]
    )


@lru_cache(maxsize=None)
def goal_of(split: str, index: int) -> dict:
    """The task's goal (cheap: what `tasks()` lists). Everything random comes from one seeded generator."""
    rng = random.Random(f"shop/1/{split}/{index}/goal")
    category = rng.choice(OOD_CATEGORIES if split == "ood" else IN_DIST)
    _, option_spec, (low, high) = CATEGORIES[category]
    if split == "combo":
        attrs = (rng.choice(CATEGORIES[category][0]), rng.choice(BORROWED[category]))
    else:
        attrs = _pick_attrs(rng, category)
    options = {"color": rng.choice(COLORS)}
    for key, values in option_spec.items():
        options[key] = rng.choice(values)
    price = rng.randint(low, high - 1)
    budget = (price // 10 + 1) * 10
    item = f"{' '.join(attrs)} {category}"
    option_text = options["color"] + "".join(f", {k} {v}" for k, v in options.items() if k != "color")
    instruction = rng.choice(TEMPLATES).format(a=article(item), item=item, options=option_text, budget=budget)
    goal = {
        "category": category,
        "attrs": attrs,
        "options": options,
        "price": price,
        "budget": budget,
        "query": item,
        "instruction": instruction,
    }
    return {**goal, "combo": True} if split == "combo" else goal


@lru_cache(maxsize=4096)
def world_of(split: str, index: int) -> dict:
    """The products of a task and the candidate queries of its search page (never modified after this)."""
    goal = goal_of(split, index)
    rng = random.Random(f"shop/1/{split}/{index}/world")
    category, attrs, budget = goal["category"], goal["attrs"], goal["budget"]
    _, option_spec, (low, high) = CATEGORIES[category]
    brands = list(BRANDS)
    rng.shuffle(brands)

    def colors_with(wanted: str | None, without: str | None = None) -> list[str]:
        pool = [c for c in COLORS if c not in (wanted, without)]
        picked = rng.sample(pool, rng.randint(1, 3)) + ([wanted] if wanted else [])
        return sorted(picked, key=COLORS.index)

    def options_with(wanted: dict | None, drop: str | None = None) -> dict:
        out = {}
        for key, values in option_spec.items():
            want = wanted.get(key) if wanted and key != drop else None
            pool = [v for v in values if v != want and not (drop == key and v == goal["options"][key])]
            picked = rng.sample(pool, min(len(pool), rng.randint(1, 3))) + ([want] if want else [])
            out[key] = sorted(picked, key=values.index)
        return out

    goal_opts = goal["options"]
    target = _product(
        brands.pop(), category, attrs, colors_with(goal_opts["color"]), options_with(goal_opts), goal["price"]
    )
    products = [target]
    # Same name, different brand: each is wrong in one way that only the price or the item page shows.
    faults = ["price"] + [
        rng.choice(["price", "color", "size" if option_spec else "color"]) for _ in range(rng.randint(0, 3))
    ]
    for fault in faults:
        price = rng.randint(budget + 1, budget + 40) if fault == "price" else rng.randint(low, budget - 1)
        colors = colors_with(None, without=goal_opts["color"]) if fault == "color" else colors_with(goal_opts["color"])
        opts = options_with(goal_opts, drop="size" if fault == "size" else None)
        products.append(_product(brands.pop(), category, attrs, colors, opts, price))
    # Same category, one or both attributes different.
    own = attribute_pool(goal)
    others = [a for a in own if a not in attrs]
    for _ in range(2):
        changed = tuple(sorted({rng.choice(attrs), rng.choice(others)}, key=own.index))
        products.append(
            _product(
                brands.pop(),
                category,
                changed,
                colors_with(goal_opts["color"]),
                options_with(goal_opts),
                rng.randint(low, high),
            )
        )
    # Other categories of the split's pool, preferring ones that share an attribute word.
    pool = [c for c in (CATEGORIES if split == "ood" else IN_DIST) if c != category]
    sharing = [c for c in pool if set(CATEGORIES[c][0]) & set(attrs)]
    for other in (rng.sample(sharing, min(2, len(sharing))) + rng.sample(pool, 2))[:3]:
        o_attrs, o_opts, (o_low, o_high) = CATEGORIES[other]
        shared = [a for a in attrs if a in o_attrs]
        picked = tuple(sorted(set(shared[:1]) | set(rng.sample(o_attrs, 2)), key=o_attrs.index))[:2]
        options = {k: sorted(rng.sample(v, 2), key=v.index) for k, v in o_opts.items()}
        products.append(_product(brands.pop(), other, picked, colors_with(None), options, rng.randint(o_low, o_high)))
    # Names are button labels: keep them unique within the world.
    seen = set()
    products = [p for p in products if not (p["name"] in seen or seen.add(p["name"]))]
    order = list(range(len(products)))
    rng.shuffle(order)  # the tie-break of the search ranking: the target is not always first
    rank = {name: r for r, name in zip(order, (p["name"] for p in products))}
    # Candidate queries: the one the instruction implies, and plausible others from the catalogue.
    queries = {goal["query"], f"{attrs[0]} {category}", f"{' '.join(_pick_attrs(rng, category))} {category}"}
    while len(queries) < 5:
        other = rng.choice(pool)
        queries.add(f"{' '.join(_pick_attrs(rng, other))} {other}")
    return {"products": products, "rank": rank, "queries": sorted(queries), "target": target["name"]}


class ShopEnv(NumberedTasks):
    name = "shop"
    version = "1"
    splits = ("train", "test", "ood", "combo")
    can_snapshot = True
    action_format = "search[QUERY] on the search page | click[LABEL] for a [button] or an item name"
    max_steps = 15
    closed_actions = True
    options = {}  # none: an --env-arg is an error, not a silent change of every trajectory id
    split_sizes = SPLIT_SIZES

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state: dict | None = None
        self.world: dict | None = None
        self.goal: dict | None = None

    # --- tasks ----------------------------------------------------------------------------------------------
    def task_fields(self, split: str, index: int) -> dict:
        goal = goal_of(split, index)
        return {"goal": goal["instruction"], "category": goal["category"]}

    # --- episode --------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        split, index = self.locate(task)
        self.goal, self.world = goal_of(split, index), world_of(split, index)
        self.state = {
            "page": "search",
            "query": "",
            "results": [],
            "page_no": 0,
            "item": None,
            "selected": {},
            "bought": None,
            "steps": 0,
        }
        return self._render()

    def expert(self, task: dict) -> list[str]:
        split, index = self.locate(task)
        goal, world = goal_of(split, index), world_of(split, index)
        results = self._search(world, goal["query"])
        page = results.index(world["target"]) // PER_PAGE
        target = next(p for p in world["products"] if p["name"] == world["target"])
        options = [goal["options"]["color"]] + [goal["options"][k] for k in target["options"] if k != "color"]
        return (
            [f"search[{goal['query']}]"]
            + ["click[next >]"] * page
            + [f"click[{world['target']}]"]
            + [f"click[{v}]" for v in options]
            + ["click[buy now]"]
        )

    @staticmethod
    def _search(world: dict, query: str) -> list[str]:
        words = _tokens(query)
        scored = [(len(words & p["tokens"]), p["name"]) for p in world["products"]]
        ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], world["rank"][s[1]]))
        return [name for _, name in ranked]

    def _product(self, name: str) -> dict:
        return next(p for p in self.world["products"] if p["name"] == name)

    def _buttons(self) -> list[str]:
        """The clickable labels of the current page, in the order they are shown."""
        s = self.state
        if s["page"] == "results":
            shown = s["results"][s["page_no"] * PER_PAGE : (s["page_no"] + 1) * PER_PAGE]
            nav = (
                ["back to search"]
                + (["< prev"] if s["page_no"] > 0 else [])
                + (["next >"] if (s["page_no"] + 1) * PER_PAGE < len(s["results"]) else [])
            )
            return shown + nav
        if s["page"] == "item":
            product = self._product(s["item"])
            values = [v for vals in product["options"].values() for v in vals]
            return values + ["< prev", "back to search", "buy now"]
        return []

    def admissible(self) -> list[str] | None:
        if self.state is None or self.state["bought"] is not None:
            return []
        if self.state["page"] == "search":
            return [f"search[{q}]" for q in self.world["queries"]]
        return [f"click[{b}]" for b in self._buttons()]

    def _render(self) -> str:
        s = self.state
        if s["bought"] is not None:
            return f"you bought {s['bought']}. thank you for shopping."
        if s["page"] == "search":
            return "search page. type a query with search[...]"
        if s["page"] == "results":
            total = max(1, -(-len(s["results"]) // PER_PAGE))
            if not s["results"]:
                return f'no results for "{s["query"]}".\n[back to search]'
            shown = s["results"][s["page_no"] * PER_PAGE : (s["page_no"] + 1) * PER_PAGE]
            lines = [f'results for "{s["query"]}" (page {s["page_no"] + 1} of {total})']
            lines += [f"[{name}] ${self._product(name)['price']}" for name in shown]
            lines.append(" ".join(f"[{b}]" for b in self._buttons()[len(shown) :]))
            return "\n".join(lines)
        p = self._product(s["item"])
        lines = [p["name"], f"price: ${p['price']}", f"about: {', '.join(p['attrs'])} {p['category']} by {p['brand']}"]
        lines += [f"{key}: " + " ".join(f"[{v}]" for v in vals) for key, vals in p["options"].items()]
        if s["selected"]:
            lines.append("selected: " + ", ".join(s["selected"][k] for k in p["options"] if k in s["selected"]))
        lines.append("[< prev] [back to search] [buy now]")
        return "\n".join(lines)

    def canonicalize(self, action: str) -> str:
        text = normalize_space(action.lower())
        return re.sub(r"\s*\[\s*(.*?)\s*\]\s*$", r"[\1]", text)

    def _invalid(self, reason: str) -> tuple[str, float, bool, dict]:
        return f"invalid action: {reason}.\n{self._render()}", 0.0, False, {"valid": False}

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        s = self.state
        if s is None:
            raise EnvError("shop: step() before reset()")
        if s["bought"] is not None:
            return "invalid action: the episode is over.", 0.0, True, {"valid": False}
        s["steps"] += 1
        m = _ACTION.match(self.canonicalize(action))
        if not m:
            return self._invalid("use search[query] on the search page or click[label]")
        kind, arg = m.groups()
        if kind == "search":
            if s["page"] != "search":
                return self._invalid("search works on the search page only; click [back to search] first")
            if not arg:
                return self._invalid("the query is empty")
            s.update(page="results", query=arg, results=self._search(self.world, arg), page_no=0)
            return self._render(), 0.0, False, {"valid": True}
        if s["page"] == "search":
            return self._invalid("there is nothing to click on the search page; use search[query]")
        if arg not in self._buttons():
            return self._invalid(f"there is no [{arg}] on this page")
        if arg == "back to search":
            s.update(page="search", query="", results=[], page_no=0, item=None, selected={})
        elif s["page"] == "results":
            if arg == "next >":
                s["page_no"] += 1
            elif arg == "< prev":
                s["page_no"] -= 1
            else:
                s.update(page="item", item=arg, selected={})
        elif arg == "< prev":
            s.update(page="results", item=None, selected={})
        elif arg == "buy now":
            s["bought"] = s["item"]
            reward = self.score()
            return self._render(), reward, True, {"valid": True, "score": reward}
        else:
            key = next(k for k, vals in self._product(s["item"])["options"].items() if arg in vals)
            s["selected"] = {**s["selected"], key: arg}
        return self._render(), 0.0, False, {"valid": True}

    # --- outcome --------------------------------------------------------------------------------------------
    def score(self) -> float:
        """WebShop's reward: (attributes + options + price matched) / (their number), times the type match."""
        s = self.state
        if s is None or s["bought"] is None:
            return 0.0
        return purchase_score(self.goal, self._product(s["bought"]), s["selected"])

    def success(self) -> bool:
        return self.score() == 1.0

    # --- reading pages that another hand wrote (the dream environment's predictions) ----------------------------
    def read_text(self, task: dict, observations: list[str]) -> dict:
        """What shop reads from its pages' text alone (Env.read_text), for an episode of `task` whose last
        observation is `observations[-1]`:

        - `valid`: False when the page begins with shop's refusal, `invalid action: ...` (the page shown under it
          is read as the page);
        - `admissible`: on the search page the task's candidate queries (its world's, as admissible() lists them);
          elsewhere `click[LABEL]` for every `[LABEL]` on the page, in the page's order (as the rendered buttons
          are); after a purchase none; a page with no button: not read (None);
        - a purchase page (`you bought NAME. thank you for shopping.`) is `done`, with shop's own `score` and
          `success`: the bought product looked up by name in the task's world (a name the world does not have
          scores 0), the options it was bought with read from the `selected:` line of the last page of that
          product in `observations` (none: none selected), graded as score() grades a purchase.
        """
        split, index = self.locate(task)
        goal, world = goal_of(split, index), world_of(split, index)
        page = observations[-1].strip()
        read: dict = {"valid": True}
        if page.startswith("invalid action:"):
            read["valid"] = False
            page = page.partition("\n")[2].strip()
        bought = _BOUGHT.fullmatch(page)
        if bought:
            score = _read_purchase(goal, world, bought.group(1), observations[:-1])
            return {**read, "admissible": [], "done": True, "score": score, "success": score == 1.0}
        if page.startswith("search page."):
            return {**read, "admissible": [f"search[{q}]" for q in world["queries"]]}
        labels = _BUTTON.findall(page)
        if labels:
            read["admissible"] = [f"click[{label}]" for label in labels]
        return read

    # --- snapshots: the world is immutable and shared, so the episode state is all there is to copy ----------
    def snapshot(self):
        return (copy.deepcopy(self.state), self.goal, self.world)

    def restore(self, snap) -> None:
        state, self.goal, self.world = snap
        self.state = copy.deepcopy(state)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "tasks": dict(SPLIT_SIZES),
            "categories": {
                "train": list(IN_DIST),
                "test": list(IN_DIST),
                "ood": list(OOD_CATEGORIES),
                "combo": list(IN_DIST),
            },
        }

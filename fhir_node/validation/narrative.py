"""The R4 narrative rules (txt-1, txt-2) on every `xhtml` value: only basic HTML formatting elements and
attributes, no scripts, forms, frames, objects or event handlers, no external references, some content.

A narrative is shown to every user of every viewer, so a `<script>` or an `onclick=` stored in one is a
cross-site scripting carrier. The element and attribute lists are the ones R4 names (narrative.html:
chapters 7-11 and 15 of HTML 4.0, `<a>`, images, style attributes) as HL7's validator applies them.
Written here because no library validates against FHIR's list (sanitisers such as bleach rewrite HTML;
the node must refuse it, naming what is wrong). Parsed with the standard library's tolerant HTML tokenizer:
character references are decoded before the checks (`&#106;avascript:` is `javascript:`), and nothing is
fetched or expanded.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html.parser import HTMLParser

# fmt: off
ELEMENTS = frozenset((
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small", "big",
    "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup",
    "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot",
    "tbody", "th", "td", "code", "samp", "img", "map", "area",
))
#: Attributes any allowed element may carry.
COMMON_ATTRIBUTES = frozenset((
    "title", "style", "class", "id", "lang", "xml:lang", "dir", "accesskey", "tabindex", "span", "width", "align",
    "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan",
))
#: Attributes only the named element may carry.
ELEMENT_ATTRIBUTES = frozenset((
    "a.href", "a.name", "a.charset", "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape", "a.coords", "img.src",
    "img.alt", "img.longdesc", "img.height", "img.width", "img.usemap", "img.ismap", "img.border", "map.name",
    "area.shape", "area.coords", "area.href", "area.nohref", "area.alt", "table.summary", "table.width",
    "table.border", "table.frame", "table.rules", "table.cellspacing", "table.cellpadding", "pre.space",
    "td.nowrap", "blockquote.cite", "q.cite",
))
# fmt: on
#: Where a link may lead (anything else, javascript: and data: first, is refused).
LINK_SCHEMES = frozenset({"http", "https", "mailto", "tel", "urn"})
#: Images are the resource's own (`#contained`, a relative Binary) or inline pictures: an external image
#: would make every viewer call a third party, telling it who reads this record and when.
_INLINE_IMAGE = re.compile(r"data:image/(png|gif|jpeg|webp);", re.IGNORECASE)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_STYLE_HAZARDS = re.compile(r"url\s*\(|expression\s*\(|@import|javascript:|behavior\s*:|-moz-binding", re.IGNORECASE)


@lru_cache(maxsize=256)
def narrative_problems(div: str) -> tuple[str, ...]:
    """What breaks txt-1 or txt-2 in one `div` value, each problem once; () when it is a safe narrative.
    Both the structure check (every xhtml value) and the `htmlChecks()` invariant ask about the same div in
    one write: remembered, it is parsed once."""
    checker = _Checker()
    checker.feed(div)
    checker.close()
    if not checker.content:
        checker.problem("txt-2: the narrative has no content (text or an image)")
    return tuple(dict.fromkeys(checker.problems))


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.content = False

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ELEMENTS:
            self.problem(f"txt-1: element <{tag}> is not allowed in a narrative (only basic HTML formatting)")
            return
        if tag == "img":
            self.content = True
        for name, value in attrs:
            self._attribute(tag, name, value or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.content = True

    def handle_decl(self, decl: str) -> None:
        self.problem("txt-1: a narrative may not carry a document type declaration")

    def unknown_decl(self, data: str) -> None:
        self.problem("txt-1: a narrative may not carry CDATA sections or other declarations")

    def handle_pi(self, data: str) -> None:
        self.problem("txt-1: a narrative may not carry processing instructions")

    def _attribute(self, tag: str, name: str, value: str) -> None:
        if name.startswith("on"):
            self.problem(f"txt-1: event handler attribute '{name}' on <{tag}> is not allowed")
            return
        if not (name.startswith("xmlns") or name in COMMON_ATTRIBUTES or f"{tag}.{name}" in ELEMENT_ATTRIBUTES):
            self.problem(f"txt-1: attribute '{name}' is not allowed on <{tag}>")
            return
        plain = _CONTROL.sub("", value)
        if name in ("href", "cite", "longdesc"):
            scheme = _SCHEME.match(plain)
            if scheme and scheme.group(1).lower() not in LINK_SCHEMES:
                self.problem(f"txt-1: {tag}.{name} may not use the '{scheme.group(1)}:' scheme")
        elif name == "src" and (_SCHEME.match(plain) or plain.startswith("//")) and not _INLINE_IMAGE.match(plain):
            self.problem(
                f"txt-1: img.src '{value[:60]}' is an external reference; use #contained, Binary or data:image"
            )
        elif name == "style" and _STYLE_HAZARDS.search(value):
            self.problem(f"txt-1: the style on <{tag}> loads or runs something (url(), expression(), @import)")

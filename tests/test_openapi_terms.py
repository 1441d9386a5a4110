"""`in_openapi_30_terms` on generated schema trees: every upload typed "file" becomes a binary
string and every `anyOf: [X, {type: null}]` a nullable X (a reference wrapped in allOf, since
3.0 ignores a reference's siblings); nothing else changes."""

from hypothesis import given
from hypothesis import strategies as st

from vgg2resnet.serving.errors import in_openapi_30_terms

NULL = {"type": "null"}
leaves = st.sampled_from(
    [{"type": "string"}, {"type": "integer"}, {"type": "file", "format": "binary"}, {"$ref": "#/components/schemas/X"}]
)


def _trees(children):
    objects = st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=3).map(
        lambda properties: {"type": "object", "properties": properties}
    )
    options = st.one_of(leaves, objects)  # what an optional value may be: a schema, not a list or a union
    return st.one_of(
        objects,
        st.tuples(options, st.booleans()).map(lambda pair: {"anyOf": [pair[0], NULL] if pair[1] else [NULL, pair[0]]}),
        st.lists(children, max_size=3).map(lambda items: {"allOf": items} if items else {"type": "object"}),
    )


trees = st.recursive(leaves, _trees, max_leaves=12)


def _walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from _walk(child)


def _count(node, predicate) -> int:
    return sum(1 for item in _walk(node) if isinstance(item, dict) and predicate(item))


@given(trees)
def test_files_and_optional_values_are_spelt_as_openapi_30_spells_them(tree):
    spelt = in_openapi_30_terms(tree)
    assert _count(spelt, lambda n: n.get("type") == "file") == 0
    assert _count(spelt, lambda n: NULL in n.get("anyOf", [])) == 0
    optional = _count(tree, lambda n: NULL in n.get("anyOf", []))
    assert _count(spelt, lambda n: n.get("nullable") is True) == optional
    files = _count(tree, lambda n: n.get("type") == "file")
    assert _count(spelt, lambda n: n.get("type") == "string" and n.get("format") == "binary") == files
    references = _count(tree, lambda n: "$ref" in n)
    assert _count(spelt, lambda n: "$ref" in n) == references
    assert _count(spelt, lambda n: "$ref" in n and len(n) > 1) == 0  # a reference stands alone
    assert in_openapi_30_terms(spelt) == spelt  # already in 3.0's terms: unchanged

"""tests/mutations.py (run by hand, not in CI) still fits the tree: every mutation's text is
in its file once and every test meant to catch it exists, so a refactor cannot leave a
mutation that breaks nothing and reports "missed", or one that quietly stops applying."""
from mutations import MUTATIONS, problems


def test_every_mutation_applies_to_the_tree_and_names_existing_tests():
    assert len(MUTATIONS) >= 10
    assert len({mutation.name for mutation in MUTATIONS}) == len(MUTATIONS)
    assert all(mutation.old != mutation.new and mutation.tests for mutation in MUTATIONS)
    assert [problem for mutation in MUTATIONS for problem in problems(mutation)] == []

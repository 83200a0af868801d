import torch

from common.seeding import derive_seed, seeded


def test_a_seeded_block_draws_from_seed_and_label_alone_and_leaves_the_global_rng_as_it_was():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with seeded(3, "head") as s:
        first = torch.rand(4)
    assert s == derive_seed(3, "head") and torch.equal(torch.get_rng_state(), before)
    torch.rand(10)  # whatever ran before does not matter
    with seeded(3, "head"):
        again = torch.rand(4)
    with seeded(3, "lora"):
        other_label = torch.rand(4)
    with seeded(4, "head"):
        other_seed = torch.rand(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_label) and not torch.equal(first, other_seed)


def test_derived_seeds_are_stable_across_processes():
    # A function of the text alone (no hash randomisation): the same in every process, on every machine and release.
    assert derive_seed(42, "guardrank/decoder") == 4283548936273927087
    assert derive_seed(0, "a") != derive_seed(0, "b") and 0 <= derive_seed(0, "a") < 2**63

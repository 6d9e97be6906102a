import trimtab.build


def test_public_api_is_sorted_and_importable():
    assert trimtab.build.__all__ == sorted(trimtab.build.__all__)
    for name in trimtab.build.__all__:
        assert getattr(trimtab.build, name) is not None

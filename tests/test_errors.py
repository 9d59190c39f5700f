from labkit.errors import LabkitError, MissingTool, PortTaken


def test_message_names_check_and_numbered_fixes():
    err = MissingTool("Checked PATH for go: missing.", ["install go", "use conda", "set VSOLAB_CACHE"], detail="extra")
    assert str(err).splitlines() == ["Checked PATH for go: missing.", "extra", "To fix it:", "  1. install go",
                                     "  2. use conda", "  3. set VSOLAB_CACHE"]
    assert isinstance(err, LabkitError)
    assert err.fixes == ["install go", "use conda", "set VSOLAB_CACHE"]


def test_every_error_shares_the_root():
    assert issubclass(PortTaken, LabkitError)
    assert LabkitError.__test__ is False

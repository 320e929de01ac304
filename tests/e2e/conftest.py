from tests.e2e.test_resume import uninterrupted, uninterrupted_dir  # noqa: F401 - session fixtures shared by e2e modules

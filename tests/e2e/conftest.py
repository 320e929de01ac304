from tests.e2e.test_resume import uninterrupted  # noqa: F401 - a session fixture shared by e2e modules

"""Root conftest: shares the fixture plugins of tests/fixtures with every test folder."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.mysql", "tests.fixtures.log_secrets"]

"""Tests: engine tests (plain pytest) and Scipion tests (marked ``scipion``)."""

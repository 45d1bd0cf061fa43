"""Faust tables: the state the stream agents keep, each changelog-backed."""

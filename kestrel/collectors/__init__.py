"""Collectors: producers (not Faust agents) that publish the digest's metric envelope."""

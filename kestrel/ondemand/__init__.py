"""On-demand analysis: images and clips submitted with a priority and a deadline.

Digest sections C, D and E. A request goes on its lane's topic
(``analysis.requests.<lane>``); the inference worker group serves the lanes by
priority and deadline beside the live cameras; every step of a request is an event on
``analysis.events`` (keyed by its id, numbered); ``analysis.cancel`` stops one.
"""

"""Deployment on Flower: the server runs the fedlit loop as a Flower ``ServerApp`` whose backend
(:class:`fedlit.flower.backend.FlowerBackend`) sends each client's requests over the SuperLink; each party runs a
SuperNode whose ``ClientApp`` (:mod:`fedlit.flower.client_app`) builds that party's client from its own settings.
Flower does the connections, TLS, node authentication and scheduling; ``fedlit deploy`` starts a run.

Flower is an extra (``pip install "fedlit[flower]"``): nothing else in fedlit imports this package.
"""

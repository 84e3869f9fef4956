"""The wire formats, one module each: its client codec (registered in ``codecs.FORMATS``) and the server's
side of it (its ``ROUTES``, mounted by ``server.py``). A new format is one module here plus its line below."""

from backends.http.protocols import bbvp, hugging_face, kserve_v1, oip_v2, openai_chat, torchserve

PROTOCOLS = (bbvp, oip_v2, kserve_v1, torchserve, hugging_face, openai_chat)
ROUTES = [route for protocol in PROTOCOLS for route in protocol.ROUTES]

__all__ = ["PROTOCOLS", "ROUTES"]

"""twistd plugin: C{twistd filexfer --port 8000 --root DIR}."""

from twisted.application.service import ServiceMaker

filexfer = ServiceMaker(
    "filexfer",
    "filexfer.tap",
    "Receive files over TCP (classic push and FX/1) and serve TFTP on UDP",
    "filexfer",
)

from tests.integration.conftest import request
async def test_smoke(sidecar):
    r = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/hello?x=1")
    assert r.status == 200, r
    assert r.json()["path"] == "/hello?x=1"

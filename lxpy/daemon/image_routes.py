"""The API's image and remote routes (docs/api.md, "Images")."""

from __future__ import annotations

from lxpy.daemon import openapi
from lxpy.daemon.http import Request, Router
from lxpy.daemon.images import Images
from lxpy.errors import InvalidArgument

S = openapi.ref


def _strings(body: dict[str, object], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key!r} must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def add_image_routes(r: Router, images: Images) -> None:
    """Remotes, a remote's images, the local image cache, pull and publish."""

    # -- remotes ------------------------------------------------------------
    async def list_remotes(req: Request) -> object:
        return await images.list_remotes()

    async def add_remote(req: Request) -> object:
        return await images.add_remote(req.json())

    async def remove_remote(req: Request) -> object:
        await images.remove_remote(req.params["name"])
        return {}

    async def remote_images(req: Request) -> object:
        words = req.query.get("filter", "").split()
        if req.flag("refresh"):
            await images.catalog(req.params["name"], refresh=True)
        return await images.remote_images(req.params["name"], words)

    r.add(
        "GET",
        "/1.0/remotes",
        list_remotes,
        "List image servers",
        response=openapi.array(S("Remote")),
    )
    r.add(
        "POST",
        "/1.0/remotes",
        add_remote,
        "Add an image server",
        status=201,
        body=openapi.REMOTE_BODY,
        response=S("Remote"),
    )
    r.add(
        "DELETE",
        "/1.0/remotes/{name}",
        remove_remote,
        "Remove an image server (cached images stay)",
        response=openapi.EMPTY,
    )
    r.add(
        "GET",
        "/1.0/remotes/{name}/images",
        remote_images,
        "List the newest version of each image an image server offers",
        query=(
            ("filter", "space-separated words: KEY=VALUE on a column, or text in an alias"),
            ("refresh", "1 to read the server's index again now"),
        ),
        response=openapi.array(S("RemoteImage")),
    )

    # -- local images -------------------------------------------------------
    async def list_images(req: Request) -> object:
        return await images.list_local()

    async def get_image(req: Request) -> object:
        return await images.get(req.params["ref"])

    async def delete_image(req: Request) -> object:
        await images.delete(req.params["ref"])
        return {}

    async def patch_image(req: Request) -> object:
        body = req.json()
        return await images.set_aliases(
            req.params["ref"], _strings(body, "add_aliases"), _strings(body, "remove_aliases")
        )

    async def pull(req: Request) -> object:
        op = await images.start_pull(req.json().get("image"))
        return op.to_json()

    async def publish(req: Request) -> object:
        return await images.publish(req.json())

    img = "/1.0/images/{ref}"
    r.add(
        "GET", "/1.0/images", list_images, "List cached images", response=openapi.array(S("Image"))
    )
    r.add(
        "POST",
        "/1.0/images",
        publish,
        "Publish a stopped container or a snapshot as an image",
        status=201,
        body=openapi.PUBLISH_BODY,
        response=S("Image"),
    )
    r.add(
        "POST",
        "/1.0/images/pull",
        pull,
        "Download an image from an image server into the cache (cached: nothing to do)",
        status=202,
        body=openapi.PULL_BODY,
        response=S("Operation"),
    )
    r.add("GET", img, get_image, "Show an image (by alias or fingerprint)", response=S("Image"))
    r.add(
        "PATCH",
        img,
        patch_image,
        "Add and remove an image's aliases",
        body=openapi.ALIASES_BODY,
        response=S("Image"),
    )
    r.add("DELETE", img, delete_image, "Delete a cached image", response=openapi.EMPTY)

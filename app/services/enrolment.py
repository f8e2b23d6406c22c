"""Classes and support images. Enrolment is all-or-nothing: decode and embed every file
first, then write blobs, then commit rows; any failure removes the blobs this request
created and leaves no row."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from fastapi import UploadFile
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, StoreDown
from app.schemas import ClassCreate, ClassPublic, ImagePublic
from app.services import scope
from app.services.keys import Principal
from app.services.runtime import Runtime
from app.services.uploads import decode_all, read_parts
from storage import repositories as repo
from storage.blobs import NotAllStored
from storage.objects import StoreUnavailable
from storage.tables import DefectClass, SupportImage

log = logging.getLogger("fsdi")


def class_public(c: DefectClass, count: int) -> ClassPublic:
    return ClassPublic(id=c.id, name=c.name, description=c.description, group=c.group_name,
                       kind=c.kind, image_count=count, created_at=c.created_at)


def image_public(i: SupportImage) -> ImagePublic:
    return ImagePublic(id=i.id, class_id=i.class_id, sha256=i.sha256,
                       original_name=i.original_name, byte_size=i.byte_size, width=i.width,
                       height=i.height, created_at=i.created_at)


def create_class(rt: Runtime, body: ClassCreate, who: Principal) -> ClassPublic:
    scope.check_group(rt, who, body.group)
    try:
        with rt.sessions.begin() as s:
            if repo.find_class(s, body.group, body.name):
                raise Conflict(f"class {body.name!r} already exists in group {body.group!r}",
                               code="duplicate_class")
            c = DefectClass(name=body.name, description=body.description,
                            group_name=body.group, kind=body.kind)
            s.add(c)
            s.flush()
            repo.audit(s, who.actor, "class.create", f"id={c.id} group={body.group} "
                       f"name={body.name} kind={body.kind}")
            return class_public(c, 0)
    except IntegrityError:  # a concurrent create won the race
        raise Conflict(f"class {body.name!r} already exists in group {body.group!r}",
                       code="duplicate_class") from None


def list_classes(rt: Runtime, group: str | None, who: Principal) -> list[ClassPublic]:
    if group is not None:
        scope.check_group(rt, who, group)
    with rt.sessions() as s:
        rows = [c for c in repo.list_classes(s, group) if scope.reaches(who, c.group_name)]
        counts = repo.image_counts(s, [c.id for c in rows])
        return [class_public(c, counts[c.id]) for c in rows]


def _class(rt: Runtime, s: Session, class_id: int, who: Principal) -> DefectClass:
    """The class, or the same 404 whether it is missing or in a group out of the key's
    reach."""
    c = repo.get_class(s, class_id)
    missing = f"class {class_id} not found"
    if c is None:
        raise NotFound(missing)
    scope.check(rt, who, c.group_name, missing)
    return c


def get_class(rt: Runtime, class_id: int, who: Principal) -> ClassPublic:
    with rt.sessions() as s:
        c = _class(rt, s, class_id, who)
        return class_public(c, repo.image_counts(s, [c.id])[c.id])


def list_images(rt: Runtime, class_id: int, who: Principal) -> list[ImagePublic]:
    with rt.sessions() as s:
        _class(rt, s, class_id, who)
        return [image_public(i) for i in repo.images_of_class(s, class_id)]


async def add_images(rt: Runtime, class_id: int, files: list[UploadFile],
                     who: Principal) -> tuple[list[ImagePublic], ClassPublic]:
    cls = get_class(rt, class_id, who)
    return await enrol_bytes(rt, cls, await read_parts(files, rt.settings), who)


async def enrol_bytes(rt: Runtime, cls: ClassPublic, parts: list[tuple[str, bytes]],
                      who: Principal) -> tuple[list[ImagePublic], ClassPublic]:
    class_id = cls.id
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    seen: dict[str, str] = {}
    for u in uploads:
        if u.sha256 in seen:
            raise Conflict(f"{u.filename}: same image as {seen[u.sha256]} in this request",
                           code="duplicate_image")
        seen[u.sha256] = u.filename
    with rt.sessions() as s:
        dupes = repo.sha_in_class(s, class_id, list(seen))
    if dupes:
        name = next(u.filename for u in uploads if u.sha256 in dupes)
        raise Conflict(f"{name}: this image is already enrolled in class {class_id}",
                       code="duplicate_image")
    # Every image keeps its patch features: good images form the patch memory, defect
    # images can place its threshold (README, "Good parts").
    vectors, patches = rt.unpack(await rt.batcher.embed(np.stack([u.tensor for u in uploads])))
    try:
        created = await asyncio.to_thread(rt.blobs.put_many,
                                          [(u.data, u.sha256) for u in uploads])
    except NotAllStored as exc:
        await asyncio.to_thread(_remove_unreferenced, rt, exc.created)
        raise StoreDown(f"image storage is unavailable ({exc}); nothing of this request "
                        f"was stored, retry shortly", headers={"Retry-After": "5"}) from None
    try:
        images = _commit_images(rt, class_id, uploads, vectors, patches, who)
    except BaseException:
        await asyncio.to_thread(_remove_unreferenced, rt, created)
        raise
    # The group's patch memory and threshold are rebuilt (good images form it, defect
    # images can place its threshold): off the event loop.
    await asyncio.to_thread(_refresh, rt, class_id, cls.group)
    rt.metrics.enrolled.inc(len(images))
    rt.metrics.classes.set(rt.cache.class_count())
    return images, get_class(rt, class_id, who)


def _refresh(rt: Runtime, class_id: int, group: str) -> None:
    with rt.sessions() as s:
        rt.cache.refresh_class(s, class_id, group)


def _commit_images(rt: Runtime, class_id: int, uploads: list, vectors: np.ndarray,
                   patches: np.ndarray | None, who: Principal) -> list[ImagePublic]:
    bb = rt.backbone
    try:
        with rt.sessions.begin() as s:
            cls = repo.get_class(s, class_id)
            if cls is None:
                raise NotFound(f"class {class_id} not found")
            rows = []
            for i, (u, v) in enumerate(zip(uploads, vectors, strict=True)):
                img = SupportImage(class_id=class_id, sha256=u.sha256,
                                   original_name=u.filename, byte_size=len(u.data),
                                   width=u.width, height=u.height)
                img.embeddings.append(repo.new_embedding(v, bb.name, bb.weights_sha256,
                                                         bb.version))
                if patches is not None:
                    img.patches.append(repo.new_patches(patches[i], bb.patch_version))
                s.add(img)
                rows.append(img)
            s.flush()
            repo.bump_group(s, cls.group_name)
            for img in rows:
                repo.audit(s, who.actor, "image.add",
                           f"class={class_id} image={img.id} sha256={img.sha256}")
            return [image_public(i) for i in rows]
    except IntegrityError:
        raise Conflict("an image of this request was enrolled concurrently",
                       code="duplicate_image") from None


def _remove_unreferenced(rt: Runtime, digests: list[str]) -> None:
    """Delete the blobs no row refers to; those the store cannot delete now are left to
    the orphan sweep (no row names them, so nothing is half-stored)."""
    if not digests:
        return
    with rt.sessions() as s:
        for d in digests:
            if not repo.sha_referenced(s, d):
                try:
                    rt.blobs.delete(d)
                except StoreUnavailable as exc:
                    log.warning("blob %s left for the orphan sweep: %s", d[:12], exc)


async def delete_class(rt: Runtime, class_id: int, who: Principal) -> None:
    with rt.sessions.begin() as s:
        c = _class(rt, s, class_id, who)
        group = c.group_name
        digests = repo.delete_class(s, c)
        repo.bump_group(s, group)
        repo.audit(s, who.actor, "class.delete", f"id={class_id} group={group}")
    await _refresh_after_delete(rt, class_id, group)
    await asyncio.to_thread(_remove_unreferenced, rt, digests)


async def delete_image(rt: Runtime, class_id: int, image_id: int, who: Principal) -> None:
    with rt.sessions.begin() as s:
        img = s.get(SupportImage, image_id)
        missing = f"image {image_id} not found in class {class_id}"
        if img is None or img.class_id != class_id:
            raise NotFound(missing)
        scope.check(rt, who, img.defect_class.group_name, missing)
        group = img.defect_class.group_name
        digest = img.sha256
        s.delete(img)
        repo.bump_group(s, group)
        repo.audit(s, who.actor, "image.delete",
                   f"class={class_id} image={image_id} sha256={digest}")
    await _refresh_after_delete(rt, class_id, group)
    await asyncio.to_thread(_remove_unreferenced, rt, [digest])


async def _refresh_after_delete(rt: Runtime, class_id: int, group: str) -> None:
    """A deletion from a group whose patch memory is at its cap rebuilds that memory from
    every remaining good image (a cover cannot forget one image's patches): that runs in
    the background while the old memory keeps serving, and the request returns once the
    deletion is committed. Anything else is refreshed before the request returns."""
    async def refresh() -> None:
        await asyncio.to_thread(_refresh, rt, class_id, group)
        rt.metrics.classes.set(rt.cache.class_count())

    served = rt.cache.served(group)
    good = served.good_parts if served is not None else None
    if good is None or good.memory.radius == 0.0:
        await refresh()
        return

    async def rebuild() -> None:
        try:
            await refresh()
        except Exception:  # the next change or replica sync reads the group again
            log.exception("rebuilding group %s's memory after a deletion failed", group)

    task = asyncio.create_task(rebuild(), name=f"fsdi-rebuild-{group}")
    rt.background.add(task)
    task.add_done_callback(rt.background.discard)

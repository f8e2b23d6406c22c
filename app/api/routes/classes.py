"""Defect classes and their support images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from fastapi.responses import JSONResponse

from app.api.deps import Admin, GroupFilter, IdPath, Operator, RuntimeDep
from app.schemas import ClassCreate, ClassList, ClassPublic, EnrolResponse, ImagePublic
from app.services import enrolment as svc
from app.services.reports import report_for

router = APIRouter(prefix="/api/v1/classes", tags=["classes"])


@router.post("", status_code=201, response_model=ClassPublic)
def create_class(body: ClassCreate, rt: RuntimeDep, who: Admin) -> ClassPublic:
    return svc.create_class(rt, body, who)


@router.get("", response_model=ClassList)
def list_classes(rt: RuntimeDep, who: Operator,
                 group: GroupFilter = None) -> ClassList:
    return ClassList(items=svc.list_classes(rt, group, who))


@router.get("/{class_id}", response_model=ClassPublic)
def get_class(class_id: IdPath, rt: RuntimeDep, who: Operator) -> ClassPublic:
    return svc.get_class(rt, class_id, who)


@router.delete("/{class_id}", status_code=204)
async def delete_class(class_id: IdPath, rt: RuntimeDep, who: Admin) -> Response:
    await svc.delete_class(rt, class_id, who)
    return Response(status_code=204)


@router.get("/{class_id}/images", response_model=list[ImagePublic])
def list_images(class_id: IdPath, rt: RuntimeDep, who: Operator) -> list[ImagePublic]:
    return svc.list_images(rt, class_id, who)


@router.post("/{class_id}/images", status_code=201, response_model=EnrolResponse,
             responses={201: {"description": "all images stored, or none"}})
async def add_images(class_id: IdPath, rt: RuntimeDep, who: Admin,
                     files: Annotated[list[UploadFile], File()]) -> JSONResponse:
    images, cls = await svc.add_images(rt, class_id, files, who)
    report = report_for(rt, cls.group)
    body = EnrolResponse(images=images, class_=cls, report=report).model_dump(
        mode="json", by_alias=True)
    return JSONResponse(body, status_code=201)


@router.delete("/{class_id}/images/{image_id}", status_code=204)
async def delete_image(class_id: IdPath, image_id: IdPath, rt: RuntimeDep, who: Admin) -> Response:
    await svc.delete_image(rt, class_id, image_id, who)
    return Response(status_code=204)

"""The observation side: instruments, programs, sources, lines, scans and raw data."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Float, ForeignKey, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, Name
from ccat_ops_db.models.enums import PackageState, pg_enum


class Instrument(Base):
    """A telescope instrument, e.g. CHAI."""

    __tablename__ = "instrument"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(String, default="")


class InstrumentModule(Base):
    """One module of an instrument (e.g. CHAI's LFA array); its data is one package per scan."""

    __tablename__ = "instrument_module"
    __table_args__ = (UniqueConstraint("instrument_id", "name"),)

    id: Mapped[IntPK]
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instrument.id"), index=True)
    name: Mapped[Name]
    description: Mapped[str] = mapped_column(String, default="")


class ObservingProgram(Base):
    """A science program that observations are taken for."""

    __tablename__ = "observing_program"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(String, default="")


class Source(Base):
    """An astronomical source (e.g. NGC253), with its position in degrees."""

    __tablename__ = "source"
    __table_args__ = (
        CheckConstraint("ra_deg >= 0 AND ra_deg < 360", name="ra_range"),
        CheckConstraint("dec_deg >= -90 AND dec_deg <= 90", name="dec_range"),
    )

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    ra_deg: Mapped[float | None] = mapped_column(Float)
    dec_deg: Mapped[float | None] = mapped_column(Float)


class Line(Base):
    """A spectral line (e.g. CO43) with its rest frequency."""

    __tablename__ = "line"
    __table_args__ = (CheckConstraint("rest_frequency_ghz > 0", name="positive_frequency"),)

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    rest_frequency_ghz: Mapped[float] = mapped_column(Float)


class ObsUnit(Base):
    """A planned observation: one source in one line for one program."""

    __tablename__ = "obs_unit"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"), index=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("line.id"), index=True)
    observing_program_id: Mapped[int] = mapped_column(
        ForeignKey("observing_program.id"), index=True
    )
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instrument.id"))


class ExecutedObsUnit(Base):
    """One scan of an ObsUnit, with its start and end time."""

    __tablename__ = "executed_obs_unit"
    __table_args__ = (CheckConstraint("end_time >= start_time", name="end_after_start"),)

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    obs_unit_id: Mapped[int] = mapped_column(ForeignKey("obs_unit.id"), index=True)
    start_time: Mapped[dt.datetime] = mapped_column()
    end_time: Mapped[dt.datetime] = mapped_column()
    created_at: Mapped[CreatedAt]


class RawDataPackage(Base):
    """One scan x one instrument module of raw data: the unit the pipelines consume."""

    __tablename__ = "raw_data_package"
    __table_args__ = (
        UniqueConstraint("executed_obs_unit_id", "instrument_module_id"),
        CheckConstraint("size >= 0", name="size_non_negative"),
    )

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    executed_obs_unit_id: Mapped[int] = mapped_column(
        ForeignKey("executed_obs_unit.id"), index=True
    )
    instrument_module_id: Mapped[int] = mapped_column(
        ForeignKey("instrument_module.id"), index=True
    )
    size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(128))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    state: Mapped[PackageState] = mapped_column(
        pg_enum(PackageState, "package_state"), default=PackageState.REGISTERED
    )
    created_at: Mapped[CreatedAt]

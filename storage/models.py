"""SQLAlchemy 2 models of the gallery. The Alembic revisions in storage/migrations create exactly
these tables (a test compares them); the FTS5 index over prompts exists only on SQLite and lives
in the migrations alone (see storage/search.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KINDS = ("draft", "refined", "txt2img", "img2img", "controlnet", "imported")
FTS_TABLE = "generations_fts"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC on every dialect; always read back timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class GenerationRow(Base):
    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("generations.id", ondelete="SET NULL"), nullable=True, index=True
    )
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    recipe_json: Mapped[str] = mapped_column(Text, nullable=False)  # exactly as Recipe.to_json wrote it
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    negative: Mapped[str] = mapped_column(Text, nullable=False)
    prompt_template: Mapped[str | None] = mapped_column(Text, nullable=True)  # revision 0003
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    model_name: Mapped[str] = mapped_column(String(512), nullable=False, index=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scheduler: Mapped[str] = mapped_column(String(32), nullable=False)
    steps: Mapped[int] = mapped_column(Integer, nullable=False)
    guidance: Mapped[float] = mapped_column(Float, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    switch: Mapped[float] = mapped_column(Float, nullable=False)
    strength: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    favourite: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
    files_missing: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    __table_args__ = (Index("ix_generations_created_at_id", "created_at", "id"),)


class GenerationLoraRow(Base):
    __tablename__ = "generation_loras"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), nullable=False, index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weight: Mapped[float] = mapped_column(Float, nullable=False)


class FileRow(Base):
    """One content-addressed file under <home>/files/. `role` is the role it was first saved in."""

    __tablename__ = "files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    relative_path: Mapped[str] = mapped_column(String(256), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)


class GenerationFileRow(Base):
    """Which files a generation uses, and as what (image, thumbnail, latent, source, control:0 …)."""

    __tablename__ = "generation_files"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("files.sha256"), nullable=False, index=True)


class GenerationTagRow(Base):
    """Added by revision 0002."""

    __tablename__ = "generation_tags"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (Index("ix_generation_tags_tag", "tag"),)


class FileJournalRow(Base):
    """Added by revision 0004: files the gallery itself is about to create ("pending", committed before
    the file is written) or has just given up ("deleted", committed with the row delete). The start-up
    sweep removes a journalled file only while no `files` row claims it; nothing else is ever removed
    for lack of a row (storage/sweep.py)."""

    __tablename__ = "file_journal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    relative_path: Mapped[str] = mapped_column(String(256), nullable=False)
    reason: Mapped[str] = mapped_column(String(16), nullable=False)  # "pending" | "deleted"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

"""Every Parquet table gradclean writes or reads, defined once.

Writers (`pipeline.io.write_table`), readers (`pipeline.io.read_table`) and the Great Expectations suites
(`pipeline.validation`) are all built from the `TableSchema` objects here. Score columns state their
direction (what a high value means) and their range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.errors import ValidationFailed

CLASS_NAMES_KEY = b"gradclean.class_names"
"""Arrow schema-metadata key holding the JSON list of class names (index = label)."""


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        name: Column name.
        type: Arrow type.
        nullable: Whether nulls are allowed.
        description: What the column holds.
        direction: For scores, what a high value means (empty for non-scores).
        min_value: Inclusive lower bound for numeric columns (None = unbounded).
        max_value: Inclusive upper bound for numeric columns (None = unbounded).
        unique: Whether values must be unique.
        allowed: Closed set of allowed values, if any.
        is_label: Values are class indices in [0, K-1] (K known only at run time).
        distribution: A list of K non-negative values summing to 1 (probabilities, direction pools).
    """

    name: str
    type: pa.DataType
    nullable: bool = False
    description: str = ""
    direction: str = ""
    min_value: float | None = None
    max_value: float | None = None
    unique: bool = False
    allowed: tuple[str, ...] | None = None
    is_label: bool = False
    distribution: bool = False


@dataclass(frozen=True)
class TableSchema:
    """A table: required columns in order, and whether extra (method-specific) columns may follow."""

    name: str
    columns: tuple[Column, ...]
    allow_extra: bool = False
    extra_columns: tuple[Column, ...] = field(default_factory=tuple)

    def arrow_schema(self, class_names: list[str] | None = None) -> pa.Schema:
        """The Arrow schema of the required columns, with class names in the metadata if given."""
        fields = [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns]
        meta = {CLASS_NAMES_KEY: json.dumps(class_names).encode()} if class_names is not None else None
        return pa.schema(fields, metadata=meta)

    def with_extra(self, columns: tuple[Column, ...]) -> TableSchema:
        """This schema with more optional columns, e.g. the ones a detector declares in its own module."""
        return TableSchema(self.name, self.columns, self.allow_extra, self.extra_columns + tuple(columns))

    def column(self, name: str) -> Column:
        for c in self.columns + self.extra_columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def check(self, table: pa.Table, where: str) -> pa.Table:
        """Check presence, order-independent types and nullability; return the table cast to this schema.

        Raises:
            ValidationFailed: naming `where` (the file) and the offending column.
        """
        names = set(table.column_names)
        missing = [c.name for c in self.columns if c.name not in names]
        if missing:
            raise ValidationFailed(f"{where}: missing column(s) {missing} for table '{self.name}'")
        known = {c.name for c in self.columns + self.extra_columns}
        extra = [n for n in table.column_names if n not in known]
        if extra and not self.allow_extra:
            raise ValidationFailed(f"{where}: unexpected column(s) {extra} for table '{self.name}'")
        arrays, fields = [], []
        for c in self.columns + tuple(x for x in self.extra_columns if x.name in names):
            col = table.column(c.name)
            if not col.type.equals(c.type):
                try:
                    col = col.cast(c.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise ValidationFailed(
                        f"{where}: column '{c.name}' has type {col.type}, expected {c.type}"
                    ) from e
            if not c.nullable and col.null_count:
                raise ValidationFailed(f"{where}: column '{c.name}' has {col.null_count} null value(s)")
            arrays.append(col)
            fields.append(pa.field(c.name, c.type, nullable=c.nullable))
        for n in extra:
            arrays.append(table.column(n))
            fields.append(table.schema.field(n))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def class_names_of(schema: pa.Schema, where: str) -> list[str]:
    """Class names stored in a table's metadata."""
    meta = schema.metadata or {}
    if CLASS_NAMES_KEY not in meta:
        raise ValidationFailed(f"{where}: no class names in the Parquet metadata (key {CLASS_NAMES_KEY!r})")
    return list(json.loads(meta[CLASS_NAMES_KEY]))


SAMPLE_ID = Column(
    "sample_id", pa.int64(), unique=True, min_value=0, description="Join key across all tables."
)

INGESTED = TableSchema(
    "ingested",
    (
        SAMPLE_ID,
        Column(
            "label",
            pa.int32(),
            is_label=True,
            description="Annotated class index (the truth for "
            "synthetic-noise runs; the given label for user data).",
        ),
        Column(
            "image",
            pa.binary(),
            nullable=True,
            description="Encoded image bytes (PNG for converted sources); null when streamed (data.stream).",
        ),
        Column("source_path", pa.string(), nullable=True, description="Original file, relative to the root."),
        Column(
            "noisy_label",
            pa.int32(),
            nullable=True,
            is_label=True,
            description="Real noisy label from a label file (CIFAR-N), null when none.",
        ),
    ),
    extra_columns=(
        Column(
            "file",
            pa.string(),
            nullable=True,
            description="Absolute path read per batch when streamed (data.stream); absent otherwise.",
        ),
    ),
)

NOISY = TableSchema(
    "noisy",
    (
        SAMPLE_ID,
        Column("given_label", pa.int32(), is_label=True, description="Label the methods train on."),
        Column(
            "true_label", pa.int32(), nullable=True, is_label=True, description="Truth, null when unknown."
        ),
        Column("is_noisy", pa.bool_(), nullable=True, description="given != true; null when truth unknown."),
    ),
)

SCORES = TableSchema(
    "scores",
    (
        SAMPLE_ID,
        Column("method", pa.string(), description="Registry name of the method."),
        Column("given_label", pa.int32(), is_label=True),
        Column("pseudo_label", pa.int32(), is_label=True, description="The method's predicted class."),
        Column(
            "confidence",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = more confident in pseudo_label",
            description="Probability of pseudo_label.",
        ),
        Column(
            "noise_score",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = given label more likely wrong",
            description="Method-specific; for CE it is 1 - p(given_label).",
        ),
        Column("is_flagged", pa.bool_(), description="The method calls the given label wrong."),
        Column(
            "probs", pa.list_(pa.float32()), distribution=True, description="Class probabilities, length K."
        ),
        Column(
            "grad_similarity",
            pa.float32(),
            nullable=True,
            min_value=-1.0,
            max_value=1.0,
            direction="higher = gradient agrees with other samples (more likely clean)",
            description="Mean top-k cosine of last-layer per-example gradients; null until computed.",
        ),
    ),
    allow_extra=True,  # a method's or detector's own columns: its spec's `columns` (checked there)
)

POOL_HISTORY = TableSchema(
    "pool_history",
    (
        Column("sample_id", pa.int64(), min_value=0, description="Training sample (one row per epoch)."),
        Column("epoch", pa.int32(), min_value=1, description="Pools after this epoch (1-based)."),
        Column(
            "pool",
            pa.list_(pa.float32()),
            distribution=True,
            description="Direction pool D / ΣD of the (first) network, length K.",
        ),
        Column(
            "pool_peer",
            pa.list_(pa.float32()),
            nullable=True,
            distribution=True,
            description="Second network's pool (GSS-DB / GSS-SSL), null for one network.",
        ),
    ),
)
"""GSS with `history: true`: every sample's pools after every epoch, long format (N·E rows). Other methods
and `history: false` write the table with no rows."""

OOF_PROBS = TableSchema(
    "oof_probs",
    (
        SAMPLE_ID,
        Column(
            "probs",
            pa.list_(pa.float32()),
            nullable=True,
            distribution=True,
            description="Out-of-fold CE probabilities (length K) from noise estimation; null when "
            "noise.estimate is off.",
        ),
    ),
)

EMBEDDING_MODEL_KEY = b"gradclean.embedding_model"
"""Arrow schema-metadata key of EMBEDDINGS: JSON with backbone, weights source and checksum, image size."""

EMBEDDINGS = TableSchema(
    "embeddings",
    (
        SAMPLE_ID,
        Column("split", pa.string(), allowed=("train", "test"), description="Ingested split of the sample."),
        Column(
            "embedding",
            pa.list_(pa.float32()),
            description="Penultimate features of the frozen pretrained backbone (pooled, before the "
            "classifier), mean of the image and its mirror; length D, the same for every row.",
        ),
    ),
)
"""The `embed` stage's output: one row per ingested sample (train and test)."""

DATALAB = TableSchema(
    "datalab",
    (
        SAMPLE_ID,
        Column("split", pa.string(), allowed=("train", "test"), description="Ingested split of the sample."),
        Column(
            "is_near_duplicate",
            pa.bool_(),
            description="In a near-duplicate set: its nearest neighbour is closer than datalab.threshold x "
            "the median nearest-neighbour distance (train and test searched together).",
        ),
        Column(
            "near_duplicate_score",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="lower = closer to another sample (more likely a duplicate)",
            description="cleanlab's near-duplicate score: the nearest-neighbour distance squashed to [0, 1].",
        ),
        Column(
            "near_duplicate_set",
            pa.list_(pa.int64()),
            description="sample_id of the other members of its near-duplicate set (empty when none).",
        ),
        Column("nearest_sample_id", pa.int64(), description="sample_id of its nearest neighbour."),
        Column("is_outlier", pa.bool_(), description="cleanlab flags it as atypical of the whole set."),
        Column(
            "outlier_score",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="lower = more atypical (more likely an outlier)",
            description="cleanlab's k-nearest-neighbour outlier score.",
        ),
    ),
)
"""The `datalab` stage's output: one row per ingested sample (train and test)."""

ACTIONS = ("keep", "relabel", "drop")

CLEANED = TableSchema(
    "cleaned",
    (
        SAMPLE_ID,
        Column("given_label", pa.int32(), is_label=True),
        Column("given_class", pa.string()),
        Column("cleaned_label", pa.int32(), nullable=True, is_label=True, description="Null when dropped."),
        Column("cleaned_class", pa.string(), nullable=True),
        Column("action", pa.string(), allowed=ACTIONS),
        Column(
            "confidence",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = more confident in the action",
            description="Mean confidence of the methods that agree with the action.",
        ),
        Column("reason", pa.string()),
        Column(
            "methods_agreeing", pa.int32(), min_value=0, description="How many methods voted for the action."
        ),
    ),
    extra_columns=(  # written by the clean stage (the source identity when it is given the ingested tables)
        Column(
            "decided_by",
            pa.string(),
            allowed=("vote", "review"),
            description="review: a reviewed decision set the action; vote: the methods did.",
        ),
        Column(
            "reviewer",
            pa.string(),
            nullable=True,
            description="Who reviewed the sample (also when unsure: the vote stands); null if nobody did.",
        ),
        Column(
            "decided_at", pa.string(), nullable=True, description="The review's time (ISO 8601), if given."
        ),
        Column(
            "source_path",
            pa.string(),
            nullable=True,
            description="The image file as the source names it (manifest path as given, or the image "
            "folder's relative path); null for digits and CIFAR, or when clean ran without --ingested.",
        ),
        Column(
            "source_file",
            pa.string(),
            nullable=True,
            description="source_path resolved to an absolute path (null where source_path is).",
        ),
        Column(
            "source_index",
            pa.int64(),
            nullable=True,
            min_value=0,
            description="digits: the row of scikit-learn's load_digits(); CIFAR: the position in "
            "data_batch_1..5 concatenated; null for file sources.",
        ),
    ),
)

REVIEW_QUEUE = TableSchema(
    "review_queue",
    (
        SAMPLE_ID,
        Column("rank", pa.int32(), min_value=1, unique=True, description="1 = review first."),
        Column("source_path", pa.string(), nullable=True, description="The file as the source names it."),
        Column(
            "source_index", pa.int64(), nullable=True, min_value=0, description="digits / CIFAR: position."
        ),
        Column("given_label", pa.int32(), is_label=True),
        Column("given_class", pa.string()),
        Column(
            "suggested_label", pa.int32(), is_label=True, description="Most likely class other than given."
        ),
        Column("suggested_class", pa.string()),
        Column(
            "p_wrong",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = more likely mislabeled",
            description="Mean noise_score over the voters (review.methods).",
        ),
        Column(
            "disagreement",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = the voters disagree more",
            description="2 x the standard deviation of the voters' noise_score.",
        ),
        Column(
            "expected_gain",
            pa.float32(),
            min_value=0.0,
            max_value=1.0,
            direction="higher = a review is worth more",
            description="p_wrong x (1 + w x disagreement) / (1 + w), w = review.disagreement_weight.",
        ),
        Column("vote_action", pa.string(), allowed=ACTIONS, description="What the clean stage's vote did."),
        Column(
            "opinions", pa.string(), description="Each voter: wrong / ok, its noise_score, its prediction."
        ),
        Column("reason", pa.string(), description="Why the sample is in the queue, in words."),
        Column("decision", pa.string(), nullable=True, description="Blank: for the reviewer to fill in."),
        Column("new_label", pa.string(), nullable=True, description="Blank: the class for a relabel."),
        Column("reviewer", pa.string(), nullable=True, description="Blank: who reviewed."),
        Column("note", pa.string(), nullable=True, description="Blank: free text."),
    ),
)
"""The review stage's queue: the samples worth a person's look, best first (review/queue.parquet, .csv)."""

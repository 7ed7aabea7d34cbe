"""A pharmacy workload for the event store, written the way the products write it.

Every event row carries the aggregate's full state after it (the snapshot), written in the same
transaction. Output is deterministic for a seed on a given store: an empty store and seed S always
give the same events. On a store that already holds events, the generator continues it: existing
aggregates receive further events later in time (address changes, verifications, deletions), and
the seed is combined with the store's event count so that new event ids never collide.

Rows go in with COPY (about 20-30k events per transaction), so a million events take well under
two minutes on a small machine.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pipelines.errors import SourceError
from pipelines.eventstore import connect

log = logging.getLogger(__name__)

# Tenant ids depend only on the pharmacy's number, so every run and seed speaks of the same ones.
TENANT_NAMESPACE = uuid.UUID("7d5c7e0a-4b8e-4f55-9d0a-2f8c3b1e6a10")
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
COPY_COLUMNS = (
    "event_id, tenant_id, aggregate_kind, aggregate_id, event_name, event_payload, aggregate_snapshot, event_at"
)
ROWS_PER_TRANSACTION = 25_000

FAMILY_NAMES = [
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("高橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("吉田", "ヨシダ"),
    ("山田", "ヤマダ"),
]
GIVEN_NAMES = [
    ("花子", "ハナコ", "female"),
    ("太郎", "タロウ", "male"),
    ("美咲", "ミサキ", "female"),
    ("翔太", "ショウタ", "male"),
    ("陽菜", "ヒナ", "female"),
    ("大翔", "ヒロト", "male"),
    ("結衣", "ユイ", "female"),
    ("蓮", "レン", "male"),
    ("さくら", "サクラ", "female"),
    ("健一", "ケンイチ", "male"),
]
ADDRESSES = [
    ("100-0001", "東京都", "千代田区", "千代田"),
    ("150-0002", "東京都", "渋谷区", "渋谷"),
    ("530-0001", "大阪府", "大阪市北区", "梅田"),
    ("460-0008", "愛知県", "名古屋市中区", "栄"),
    ("060-0001", "北海道", "札幌市中央区", "北一条西"),
    ("812-0011", "福岡県", "福岡市博多区", "博多駅前"),
    ("980-0021", "宮城県", "仙台市青葉区", "中央"),
    ("730-0011", "広島県", "広島市中区", "基町"),
    ("220-0011", "神奈川県", "横浜市西区", "高島"),
    ("600-8216", "京都府", "京都市下京区", "東塩小路町"),
]
MEDICINES = [
    ("アムロジピン錠5mg", "2171022F1ZZZ", 1, "錠"),
    ("ロキソプロフェンNa錠60mg", "1149019F1ZZZ", 3, "錠"),
    ("メトホルミン塩酸塩錠250mg", "3962002F1ZZZ", 2, "錠"),
    ("ランソプラゾールOD錠15mg", "2329023F1ZZZ", 1, "錠"),
    ("アトルバスタチン錠10mg", "2189015F1ZZZ", 1, "錠"),
    ("カロナール錠200", "1141007F1ZZZ", 3, "錠"),
    ("ムコダイン錠500mg", "2233002F1ZZZ", 3, "錠"),
    ("ヒルドイドソフト軟膏0.3%", "3339950M1ZZZ", 1, "g"),
]
ALLERGENS = ["ペニシリン", "セフェム系", "アスピリン", "卵", "乳", "ヨード造影剤"]
INSURERS = [
    ("06130017", "全国健康保険協会 東京支部"),
    ("31130011", "東京都国民健康保険"),
    ("32270015", "大阪府後期高齢者医療広域連合"),
    ("06270012", "全国健康保険協会 大阪支部"),
]
CLINICS = ["さくら内科クリニック", "みどり整形外科", "青葉小児科医院", "中央総合病院", "ひまわり皮膚科"]
STAFF = [("薬剤師", "pharmacist"), ("調剤事務", "clerk"), ("管理薬剤師", "chief_pharmacist")]


@dataclass
class Aggregate:
    kind: str
    aggregate_id: str
    tenant_id: str
    state: dict[str, Any]
    last_at: datetime


@dataclass
class Tenant:
    tenant_id: str
    number: int
    staff: list[dict[str, str]] = field(default_factory=list)
    # Aggregates by what may happen to them next.
    patients: list[Aggregate] = field(default_factory=list)
    received: list[Aggregate] = field(default_factory=list)
    verified: list[Aggregate] = field(default_factory=list)
    dispensing: list[Aggregate] = field(default_factory=list)
    completed: list[Aggregate] = field(default_factory=list)
    guidance: list[Aggregate] = field(default_factory=list)


def tenant_id_for(number: int) -> str:
    return str(uuid.uuid5(TENANT_NAMESPACE, f"pharmacy-{number}"))


@dataclass(frozen=True)
class GenerateResult:
    events: int
    tenants: int
    first_event_at: datetime | None
    last_event_at: datetime | None


class Workload:
    """Builds events one at a time; keeps each aggregate's state so every snapshot is coherent."""

    def __init__(self, rng: random.Random, tenants: list[Tenant]):
        self.rng = rng
        self.tenants = tenants
        self.actions: list[tuple[float, Callable[[Tenant, datetime], tuple | None]]] = [
            (14, self.register_patient),
            (7, self.change_address),
            (4, self.change_contact),
            (3, self.change_insurance),
            (3, self.record_allergy),
            (0.6, self.delete_patient),
            (16, self.receive_prescription),
            (12, self.verify_prescription),
            (1, self.cancel_prescription),
            (12, self.start_dispensing),
            (11, self.complete_dispensing),
            (8, self.give_guidance),
            (3, self.follow_up_guidance),
        ]
        self.weights = [w for w, _ in self.actions]

    # -- helpers -----------------------------------------------------------------------------
    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def pick(self, items: list[Aggregate]) -> Aggregate | None:
        return items[self.rng.randrange(len(items))] if items else None

    @staticmethod
    def drop(items: list[Aggregate], agg: Aggregate) -> None:
        index = items.index(agg)
        items[index] = items[-1]
        items.pop()

    def actor(self, tenant: Tenant) -> dict[str, str]:
        return tenant.staff[self.rng.randrange(len(tenant.staff))]

    def address(self) -> dict[str, Any]:
        postal, pref, city, town = ADDRESSES[self.rng.randrange(len(ADDRESSES))]
        return {
            "postal_code": postal,
            "prefecture": pref,
            "city": city,
            "line1": f"{town}{self.rng.randint(1, 5)}丁目{self.rng.randint(1, 30)}-{self.rng.randint(1, 20)}",
            "line2": self.rng.choice(["", "", f"サンハイツ{self.rng.randint(101, 905)}号室"]),
        }

    def event(self, tenant: Tenant, agg: Aggregate, name: str, at: datetime, changes: dict[str, Any]) -> tuple:
        agg.state["version"] = agg.state.get("version", 0) + 1
        agg.state["updated_at"] = at.isoformat()
        agg.last_at = at
        actor = self.actor(tenant)
        payload = {
            "actor": {"user_id": actor["user_id"], "name": actor["name"], "role": actor["role"]},
            "source": "pharmacy-app",
            "changes": changes,
        }
        return (self.new_id(), tenant.tenant_id, agg.kind, agg.aggregate_id, name, payload, agg.state, at)

    # -- actions -----------------------------------------------------------------------------
    def register_patient(self, tenant: Tenant, at: datetime) -> tuple:
        family, family_kana = FAMILY_NAMES[self.rng.randrange(len(FAMILY_NAMES))]
        given, given_kana, sex = GIVEN_NAMES[self.rng.randrange(len(GIVEN_NAMES))]
        birth = date(1935, 1, 1) + timedelta(days=self.rng.randrange(365 * 85))
        insurer_no, insurer = INSURERS[self.rng.randrange(len(INSURERS))]
        state = {
            "patient_number": f"P{tenant.number:03d}-{self.rng.randrange(10**7):07d}",
            "name": {"family": family, "given": given, "kana": f"{family_kana} {given_kana}"},
            "sex": sex,
            "birth_date": birth.isoformat(),
            "address": self.address(),
            "contact": {
                "phone": f"0{self.rng.randint(3, 9)}0-{self.rng.randint(1000, 9999)}-{self.rng.randint(1000, 9999)}"
            },
            "insurance": {
                "insurer_number": insurer_no,
                "insurer_name": insurer,
                "copay_rate": self.rng.choice([0.1, 0.2, 0.3]),
            },
            "allergies": [],
            "status": "active",
        }
        agg = Aggregate("Patient", self.new_id(), tenant.tenant_id, state, at)
        tenant.patients.append(agg)
        return self.event(tenant, agg, "PatientRegistered", at, {"registered": True})

    def change_address(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.patients)
        if agg is None:
            return None
        agg.state["address"] = self.address()
        return self.event(tenant, agg, "PatientAddressChanged", at, {"address": agg.state["address"]})

    def change_contact(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.patients)
        if agg is None:
            return None
        agg.state["contact"] = {"phone": f"090-{self.rng.randint(1000, 9999)}-{self.rng.randint(1000, 9999)}"}
        return self.event(tenant, agg, "PatientContactChanged", at, {"contact": agg.state["contact"]})

    def change_insurance(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.patients)
        if agg is None:
            return None
        insurer_no, insurer = INSURERS[self.rng.randrange(len(INSURERS))]
        agg.state["insurance"] = {
            "insurer_number": insurer_no,
            "insurer_name": insurer,
            "copay_rate": self.rng.choice([0.1, 0.2, 0.3]),
        }
        return self.event(tenant, agg, "PatientInsuranceChanged", at, {"insurance": agg.state["insurance"]})

    def record_allergy(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.patients)
        if agg is None:
            return None
        allergen = ALLERGENS[self.rng.randrange(len(ALLERGENS))]
        if allergen not in agg.state["allergies"]:
            agg.state["allergies"] = [*agg.state["allergies"], allergen]
        return self.event(tenant, agg, "PatientAllergyRecorded", at, {"allergen": allergen})

    def delete_patient(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.patients)
        if agg is None:
            return None
        self.drop(tenant.patients, agg)
        agg.state["status"] = "deleted"
        return self.event(tenant, agg, "PatientDeleted", at, {"reason": "本人からの削除依頼"})

    def receive_prescription(self, tenant: Tenant, at: datetime) -> tuple | None:
        patient = self.pick(tenant.patients)
        if patient is None:
            return None
        items = []
        for _ in range(self.rng.randint(1, 3)):
            name, code, per_day, unit = MEDICINES[self.rng.randrange(len(MEDICINES))]
            days = self.rng.choice([7, 14, 28, 30])
            items.append({"drug_name": name, "drug_code": code, "dose_per_day": per_day, "unit": unit, "days": days})
        state = {
            "patient_id": patient.aggregate_id,
            "prescriber": {"clinic": self.rng.choice(CLINICS), "doctor": f"{self.rng.choice(FAMILY_NAMES)[0]}医師"},
            "issued_on": (at - timedelta(days=self.rng.randint(0, 3))).date().isoformat(),
            "items": items,
            "status": "received",
        }
        agg = Aggregate("Prescription", self.new_id(), tenant.tenant_id, state, at)
        tenant.received.append(agg)
        return self.event(tenant, agg, "PrescriptionReceived", at, {"item_count": len(items)})

    def verify_prescription(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.received)
        if agg is None:
            return None
        self.drop(tenant.received, agg)
        tenant.verified.append(agg)
        agg.state["status"] = "verified"
        agg.state["verified_by"] = self.actor(tenant)["name"]
        return self.event(tenant, agg, "PrescriptionVerified", at, {"status": "verified"})

    def cancel_prescription(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.received)
        if agg is None:
            return None
        self.drop(tenant.received, agg)
        agg.state["status"] = "cancelled"
        return self.event(tenant, agg, "PrescriptionCancelled", at, {"status": "cancelled"})

    def start_dispensing(self, tenant: Tenant, at: datetime) -> tuple | None:
        prescription = self.pick(tenant.verified)
        if prescription is None:
            return None
        self.drop(tenant.verified, prescription)
        state = {
            "prescription_id": prescription.aggregate_id,
            "patient_id": prescription.state["patient_id"],
            "items": [
                {"drug_code": i["drug_code"], "quantity": i["dose_per_day"] * i["days"], "unit": i["unit"]}
                for i in prescription.state["items"]
            ],
            "status": "in_progress",
        }
        agg = Aggregate("Dispensing", self.new_id(), tenant.tenant_id, state, at)
        tenant.dispensing.append(agg)
        return self.event(tenant, agg, "DispensingStarted", at, {"status": "in_progress"})

    def complete_dispensing(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.dispensing)
        if agg is None:
            return None
        self.drop(tenant.dispensing, agg)
        tenant.completed.append(agg)
        agg.state["status"] = "completed"
        agg.state["completed_at"] = at.isoformat()
        agg.state["fee_points"] = self.rng.randint(40, 900)
        return self.event(tenant, agg, "DispensingCompleted", at, {"status": "completed"})

    def give_guidance(self, tenant: Tenant, at: datetime) -> tuple | None:
        dispensing = self.pick(tenant.completed)
        if dispensing is None:
            return None
        self.drop(tenant.completed, dispensing)
        state = {
            "patient_id": dispensing.state["patient_id"],
            "dispensing_id": dispensing.aggregate_id,
            "topics": self.rng.sample(["服用方法", "副作用", "飲み合わせ", "保管方法", "生活指導"], 2),
            "notes": "食後に服用するよう説明。眠気に注意。",
            "follow_up_required": self.rng.random() < 0.3,
            "status": "given",
        }
        agg = Aggregate("MedicationGuidance", self.new_id(), tenant.tenant_id, state, at)
        tenant.guidance.append(agg)
        return self.event(tenant, agg, "MedicationGuidanceGiven", at, {"topics": state["topics"]})

    def follow_up_guidance(self, tenant: Tenant, at: datetime) -> tuple | None:
        agg = self.pick(tenant.guidance)
        if agg is None:
            return None
        self.drop(tenant.guidance, agg)
        agg.state["status"] = "followed_up"
        agg.state["follow_up_required"] = False
        return self.event(tenant, agg, "MedicationGuidanceFollowedUp", at, {"status": "followed_up"})

    def next_event(self, at: datetime) -> tuple:
        tenant = self.tenants[self.rng.randrange(len(self.tenants))]
        action = self.rng.choices(self.actions, weights=self.weights)[0][1]
        return action(tenant, at) or self.register_patient(tenant, at)


def _copy_field(value: Any) -> str:
    """One field in COPY's text format (tab-separated, backslash escapes)."""
    if isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _load_existing(conn, tenants: dict[str, Tenant]) -> tuple[int, datetime | None]:
    """Put the store's aggregates (latest state) into their tenants' lists; returns count and max."""
    count, last_at = conn.execute("SELECT count(*), max(event_at) FROM eventstore.events").fetchone()
    if not count:
        return 0, None
    rows = conn.execute(
        "SELECT DISTINCT ON (aggregate_id) tenant_id::text, aggregate_kind, aggregate_id::text,"
        " aggregate_snapshot, event_at FROM eventstore.events"
        " WHERE tenant_id = ANY(%s::uuid[])"
        " ORDER BY aggregate_id, event_at DESC, tx_id DESC",
        (list(tenants),),
    )
    lists = {
        ("Patient", "active"): "patients",
        ("Prescription", "received"): "received",
        ("Prescription", "verified"): "verified",
        ("Dispensing", "in_progress"): "dispensing",
        ("Dispensing", "completed"): "completed",
        ("MedicationGuidance", "given"): "guidance",
    }
    for tenant_id, kind, aggregate_id, snapshot, event_at in rows:
        name = lists.get((kind, snapshot.get("status")))
        if name:
            agg = Aggregate(kind, aggregate_id, tenant_id, snapshot, event_at)
            getattr(tenants[tenant_id], name).append(agg)
    # Fixed order, so that picking from the lists is deterministic.
    for tenant in tenants.values():
        for name in set(lists.values()):
            getattr(tenant, name).sort(key=lambda a: a.aggregate_id)
    return int(count), last_at


def generate_events(
    admin_dsn: str,
    events: int,
    tenants: int = 5,
    seed: int = 42,
    start: datetime | None = None,
    days: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateResult:
    """Write `events` pharmacy events for `tenants` pharmacies into the event store.

    Args:
        admin_dsn: a role allowed to write every tenant's rows (superuser or BYPASSRLS: COPY is
            refused on tables with row-level security otherwise).
        events: how many events to write.
        tenants: how many pharmacies (tenant ids depend only on the pharmacy number).
        seed: the random seed; combined with the store's current event count.
        start: business time of the first event; default 2025-01-01 on an empty store, else one
            second after the store's latest event.
        days: the span of business time the events are spread over; default 540 on an empty
            store, else 30.
        progress: called with (written, total) after each transaction.
    Returns:
        What was written.
    """
    if events < 0 or tenants < 1:
        raise ValueError("events must be >= 0 and tenants >= 1")
    if not admin_dsn:
        raise SourceError("eventstore generate needs LAKEHOUSE_PG_ADMIN_DSN")
    with connect(admin_dsn) as conn:
        allowed = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()[
            0
        ]
        if not allowed:
            raise SourceError(
                "eventstore generate writes with COPY, which PostgreSQL refuses under row-level "
                "security: use a superuser or BYPASSRLS role in LAKEHOUSE_PG_ADMIN_DSN"
            )
        if conn.execute("SELECT to_regclass('eventstore.events')").fetchone()[0] is None:
            raise SourceError("the event store has no eventstore.events: run `lakehouse eventstore init`")
        tenant_map = {tenant_id_for(n): Tenant(tenant_id_for(n), n) for n in range(1, tenants + 1)}
        existing, last_at = _load_existing(conn, tenant_map)
        conn.commit()
        rng = random.Random(f"{seed}:{existing}")
        for tenant in tenant_map.values():
            for i in range(3):
                family = FAMILY_NAMES[(tenant.number * 3 + i) % len(FAMILY_NAMES)][0]
                title, role = STAFF[i % len(STAFF)]
                tenant.staff.append(
                    {
                        "user_id": str(uuid.uuid5(TENANT_NAMESPACE, f"staff-{tenant.number}-{i}")),
                        "name": f"{title} {family}",
                        "role": role,
                    }
                )
        if start is None:
            start = last_at + timedelta(seconds=1) if last_at else DEFAULT_START
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        span = timedelta(days=days if days is not None else (30 if existing else 540))
        end = start + span
        conn.execute("SELECT eventstore.ensure_monthly_partitions(%s, %s)", (start, end))
        conn.commit()

        workload = Workload(rng, list(tenant_map.values()))
        step = span / max(events, 1)
        written = 0
        first_at = None
        at = start
        while written < events:
            batch = min(ROWS_PER_TRANSACTION, events - written)
            lines = []
            for i in range(batch):
                at = (
                    start
                    + step * (written + i)
                    + timedelta(microseconds=rng.randrange(max(int(step.total_seconds() * 1e6), 1)))
                )
                row = workload.next_event(at)
                lines.append("\t".join(_copy_field(v) for v in row))
            first_at = first_at or start
            with conn.transaction():
                with conn.cursor().copy(f"COPY eventstore.events ({COPY_COLUMNS}) FROM STDIN") as copy:
                    copy.write("\n".join(lines) + "\n")
            conn.commit()
            written += batch
            if progress:
                progress(written, events)
        return GenerateResult(events, tenants, first_at, at if events else None)

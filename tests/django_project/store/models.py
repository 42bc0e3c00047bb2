from __future__ import annotations

from django.db import models


class Order(models.Model):
    id: int
    customer: models.CharField[str, str] = models.CharField(max_length=100)
    receipt_sent: models.BooleanField[bool, bool] = models.BooleanField(default=False)

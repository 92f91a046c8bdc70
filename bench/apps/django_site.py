"""Benchmark app: a one-file Django site, a template page and a JSON view.

Measures what the automatic warm-up buys Django (`docs/performance.md`):

    wsgi-wasm build django_site:app --path bench/apps \
        --requirements bench/apps/django-requirements.txt -o django.wasm
"""

import django
from django.conf import settings

PAGE = """<!doctype html>
<title>{{ title }}</title>
<h1>{{ title }}</h1>
<ul>{% for item in items %}<li class="{% cycle 'odd' 'even' %}">{{ item.name|title }}: {{ item.price|floatformat:2 }}</li>{% endfor %}</ul>
"""

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark only, not a secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            # Cached, as Django's default loaders are.
            "OPTIONS": {
                "loaders": [
                    ("django.template.loaders.cached.Loader", [("django.template.loaders.locmem.Loader", {"page.html": PAGE})])
                ]
            },
        }
    ],
    USE_TZ=True,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402

ITEMS = [{"name": f"item {i}", "price": 9.99 + i} for i in range(10)]


def item(request, item_id):
    return JsonResponse({"id": item_id, "name": f"item {item_id}", "tags": ["a", "b", "c"], "price": 9.99})


def page(request):
    return render(request, "page.html", {"title": "Items", "items": ITEMS})


urlpatterns = [path("api/items/<int:item_id>", item), path("page", page)]

app = get_wsgi_application()

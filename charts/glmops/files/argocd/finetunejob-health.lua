-- Argo CD health of a glmops.io FineTuneJob, from the status the operator writes.
-- Install: argocd-cm key resource.customizations.health.glmops.io_FineTuneJob (docs/gitops.md).
--   Succeeded                          -> Healthy
--   Failed                             -> Degraded (the condition's message says why and the fix)
--   Cancelled                          -> Suspended (ended on request; its record and artifacts stay)
--   Pending, Validating, Training,
--   Exporting, or no status yet        -> Progressing (with what it waits for, or its progress)
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- Argo CD opens no string or math library for health checks: round by arithmetic alone.
local function rounded(x, places)
  local scale = 10 ^ places
  local scaled = x * scale + 0.5
  return (scaled - scaled % 1) / scale
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the glmops operator to admit the job"
  return hs
end

local phase = status.phase
local succeeded = condition(status, "Succeeded")
local message = ""
if succeeded ~= nil and succeeded.message ~= nil then
  message = succeeded.message
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message ~= "" and message or "Training and export finished"
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message ~= "" and message or "The job failed"
  return hs
end
if phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = message ~= "" and message or "Cancelled"
  return hs
end

hs.status = "Progressing"
local validated = condition(status, "Validated")
if validated ~= nil and validated.status == "False" and validated.message ~= nil then
  hs.message = phase .. ": " .. validated.message
elseif phase == "Training" and status.progress ~= nil and status.progress.totalSteps ~= nil then
  local text = "Training: step " .. tostring(status.progress.step or 0) .. "/" .. tostring(status.progress.totalSteps)
  if status.progress.loss ~= nil then
    text = text .. ", loss " .. tostring(rounded(status.progress.loss, 4))
  end
  hs.message = text
else
  hs.message = message ~= "" and (phase .. ": " .. message) or phase
end
return hs

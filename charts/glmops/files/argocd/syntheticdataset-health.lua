-- Argo CD health of a glmops.io SyntheticDataset, from the status the operator writes.
-- Install: argocd-cm key resource.customizations.health.glmops.io_SyntheticDataset (docs/gitops.md).
--   Ready                                   -> Healthy (how many samples were written, and where)
--   Failed (a refused spec, the deadline,
--   retries used up, the Job deleted)       -> Degraded (the Ready condition's message says why and the fix)
--   Pending (waiting for the teacher, a PVC,
--   a Secret or the generator pod),
--   Generating, or no status yet            -> Progressing (what it waits for, or prompts done/total)
--   a spec generation not yet observed      -> Progressing while Pending or Generating. Ready and Failed
--                                              stay: the spec is immutable and the operator never acts
--                                              on a finished dataset again (create a new one instead)
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

local function said(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the glmops operator to admit the dataset"
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local generation = obj.metadata.generation
local stale = generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation
local ignored = ""
if stale then
  ignored = " (generation " .. tostring(generation) .. " of the spec is not acted on: "
    .. "a SyntheticDataset is immutable; create a new one)"
end

if phase == "Ready" then
  local written = "Generated"
  if status.output ~= nil and status.output.uri ~= nil then
    written = tostring(status.output.samples or 0) .. " samples written to " .. status.output.uri
  end
  hs.status = "Healthy"
  hs.message = said(ready, written) .. ignored
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said(ready, "The dataset failed") .. ignored
  return hs
end

hs.status = "Progressing"
if stale then
  hs.message = "The operator has not yet acted on generation " .. tostring(generation)
  return hs
end
local progress = status.progress
local text
if phase == "Generating" and progress ~= nil and (progress.promptsTotal or 0) > 0 then
  text = "Generating: prompts " .. tostring(progress.promptsDone or 0) .. "/" .. tostring(progress.promptsTotal)
    .. " done, " .. tostring(progress.samplesKept or 0) .. " samples kept"
else
  text = phase .. ": " .. said(ready, "waiting for the operator")
end
-- A spec the operator could not check (an API error) or that changed under a running generator
-- shows in Validated only; when the dataset waits for what Validated names (a PVC, a Secret),
-- the Ready condition already says so, with the same reason.
local validated = condition(status, "Validated")
local problem = said(validated, "")
local same_cause = ready ~= nil and validated ~= nil and ready.reason == validated.reason
if validated ~= nil and validated.status ~= "True" and problem ~= "" and not same_cause then
  text = text .. "; " .. problem
end
hs.message = text
return hs
